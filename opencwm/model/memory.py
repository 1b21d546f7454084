"""GPU memory a served model needs, from its configuration alone (``opencwm model info``): weights, KV cache, and
the runtime around them, so that "fits" means a serving engine would start and take a long prompt.

The runtime, as a serving engine such as vLLM sees it:

- the engine takes only a share of the GPU (vLLM's ``gpu_memory_utilization``, 0.9 by default): weights, KV cache
  and activations must fit in that share;
- the CUDA context (driver, cuBLAS and attention kernels' workspaces) is taken before any tensor;
- activations of one prefill chunk (vLLM prefills long prompts in chunks of ``max_num_batched_tokens`` tokens): the
  MLP's gate and up projections are the largest live tensors, beside the residual stream, the attention's queries,
  keys and values, and logits of the sampled positions.

Needs only the standard library (no weights are loaded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from opencwm.model.config import CwmConfig

GIB = 1024**3


@dataclass(frozen=True)
class Runtime:
    """What the serving runtime takes besides weights and KV cache (documented defaults; all overridable)."""

    gpu_utilization: float = 0.9  # vLLM's default gpu_memory_utilization
    cuda_context_gib: float = 1.0  # CUDA context + library workspaces, typical on an H100 with PyTorch
    prefill_chunk: int = 8192  # tokens prefilled at once (vLLM's default max_num_batched_tokens on large GPUs)
    activation_bytes: int = 2  # bf16 activations


@dataclass(frozen=True)
class ServingMemory:
    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    cuda_context_gib: float
    total_gib: float

    def fits(self, gpu_gib: float, runtime: Runtime) -> bool:
        """Whether it all fits in the engine's share of a GPU of ``gpu_gib``."""
        return self.total_gib <= gpu_gib * runtime.gpu_utilization

    def as_dict(self) -> dict:
        return {key: round(value, 2) for key, value in asdict(self).items()}


def serving_memory(config: CwmConfig, *, quant: str | None, context: int, batch: int = 1,
                   runtime: Runtime = Runtime()) -> ServingMemory:
    """Memory to serve ``config`` with weights in bf16 (``quant=None``) or 8 bits with one bf16 scale per output
    channel (``int8``, ``fp8``), a bf16 KV cache of ``context`` tokens for ``batch`` sequences."""
    linear = config.num_linear_parameters
    other = config.num_parameters - linear
    scales = config.num_linear_output_channels * 2 if quant else 0
    weights = linear * (1 if quant else 2) + other * 2 + scales
    kv = config.kv_cache_bytes(context, batch, bytes_per_value=2)
    chunk = min(runtime.prefill_chunk, context * batch)
    q = config.num_attention_heads * config.head_dim
    kv_width = 2 * config.num_key_value_heads * config.head_dim
    per_token = 2 * config.intermediate_size + 2 * config.hidden_size + q + kv_width  # gate+up, residual+norm, qkv
    activations = chunk * per_token * runtime.activation_bytes + batch * config.vocab_size * 4  # fp32 logits
    context_bytes = runtime.cuda_context_gib * GIB
    total = weights + kv + activations + context_bytes
    return ServingMemory(weights / GIB, kv / GIB, activations / GIB, runtime.cuda_context_gib, total / GIB)

"""The CWM transformer in one module: a Llama-3-style decoder with interleaved local and global attention.

Module and parameter names are those of Hugging Face's ``CwmForCausalLM`` (``model.layers.N.self_attn.q_proj``,
...), so checkpoints load by name. Each ``Block`` is self-contained, so FSDP2 ``fully_shard``, activation
checkpointing and ``torch.compile`` apply per block.

    model = CWM(preset("nano"))
    logits = model(input_ids)                                   # (batch, time, vocab)
    logits = model(input_ids, document_ids=doc_ids)             # packed documents never see each other
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from opencwm.model.attention import attention, default_backend, flex_block_mask
from opencwm.model.cache import KVCache
from opencwm.model.config import FULL, CwmConfig
from opencwm.model.linear_cross_entropy import linear_cross_entropy
from opencwm.model.rope import RotaryEmbedding, apply_rotary
from opencwm.special_tokens import IGNORE as IGNORE_INDEX  # a label that asks for no prediction


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class Linear(nn.Linear):
    """A bias-free ``nn.Linear`` whose products with a few rows (decoding up to ``FEW_ROWS`` sequences), when
    compiled for inference, are written as a multiply-and-sum that Inductor turns into one streaming pass over the
    weights: the BLAS matrix-vector product read weights at ~9 GB/s on 2 AMD EPYC cores, the fused pass at ~28 GB/s
    (``benchmarks/model_bench.py``'s decoding figure). Everywhere else it is ``nn.Linear``."""

    FEW_ROWS = 8

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling() and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.numel() <= self.FEW_ROWS * self.in_features):
            return (x.unsqueeze(-2) * self.weight).sum(-1)
        return F.linear(x, self.weight)


class Attention(nn.Module):
    def __init__(self, config: CwmConfig, window: int | None, layer: int):
        super().__init__()
        self.layer = layer  # read only with a KV cache, so compiled blocks share one graph in training
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = window
        self.q_proj = Linear(config.hidden_size, self.heads * self.head_dim)
        self.k_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = Linear(self.heads * self.head_dim, config.hidden_size)

    def forward(self, x, cos, sin, *, backend, document_ids=None, cache=None, block_masks=None):
        batch, time, _ = x.shape
        q = self.q_proj(x).view(batch, time, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, time, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, time, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            block_mask = block_masks[self.window] if block_masks else None
            out = attention(q, k, v, backend=backend, window=self.window, document_ids=document_ids,
                            block_mask=block_mask)
        else:
            keys, values, mask = cache.attend_inputs(self.layer, k, v)
            out = attention(q, keys, values, backend="dense" if backend == "dense" else "sdpa", mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, time, -1))


class MLP(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: CwmConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.is_global = config.layer_types[layer] == FULL
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, None if self.is_global else config.sliding_window, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, **kwargs):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, **kwargs)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """``model.*`` of the Hugging Face layout: embeddings, blocks, final norm."""

    def __init__(self, config: CwmConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_parameters)


class CWM(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.attention_backend: str | None = None  # None: flex for training on CUDA, sdpa otherwise
        self.gradient_checkpointing = False
        self._loss_sum = loss_sum

    def init_weights(self, seed: int | None = None, *, zero_residual: bool = False) -> CWM:
        """Normal(0, initializer_range) weights and unit norms. ``zero_residual``: the projections that write into
        the residual stream (attention ``o_proj``, MLP ``down_proj``) start at zero, so every block starts as the
        identity; with Muon this trains small models faster (the speedrun uses it)."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        for name, module in self.named_modules():
            if zero_residual and name.endswith(("o_proj", "down_proj")):
                nn.init.zeros_(module.weight)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    # drawn on the CPU when seeded: the same weights on every device (and under torch.device("cuda"))
                    where = "cpu" if generator is not None else module.weight.device
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator, device=where) * std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        return self

    def compile_blocks(self, **options) -> CWM:
        """``torch.compile`` each block separately (as FSDP2 wraps them): short compiles, one graph per block."""
        import torch._dynamo

        # Blocks share one forward; local and global ones, training and cached decoding each need a graph.
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(self.model.layers))
        for block in self.model.layers:
            block.compile(**options)
        self._loss_sum = torch.compile(loss_sum, **options)
        return self

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def forward(self, input_ids: torch.Tensor, *, document_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                lengths: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, time, vocab); with ``labels``, the loss instead.

        ``document_ids`` (batch, time): packed documents; each attends only within itself, and positions restart
        at every document unless ``position_ids`` are given. With a ``cache``, ``input_ids`` continue each
        sequence from ``cache.lengths``; ``lengths`` (batch,) says how many of the tokens are real (right
        padding), and the cache advances by that much. ``labels`` (batch, time): the token each position should
        predict (already shifted; ``IGNORE_INDEX`` for none); the result is then the *summed* cross-entropy over
        the labelled positions, computed in fp32 (one compiled kernel with the final norm and the output layer
        when the blocks are compiled).
        """
        batch, time = input_ids.shape
        backend = self.attention_backend or default_backend(input_ids.device,
                                                             training=self.training and torch.is_grad_enabled())
        valid = None
        if cache is not None:
            steps = torch.arange(time, device=input_ids.device)
            lengths = torch.full((batch,), time, device=input_ids.device) if lengths is None else lengths
            valid = steps[None, :] < lengths[:, None]
            position_ids = cache.lengths[:, None] + steps[None, :]
            cache.begin_step(position_ids, valid)
        elif position_ids is None:
            position_ids = _positions(document_ids, batch, time, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary(position_ids, x.dtype)
        kwargs = dict(backend=backend, document_ids=document_ids, cache=cache)
        if backend == "flex" and cache is None:  # one block mask per kind of layer, shared by the layers
            windows = {block.self_attn.window for block in self.model.layers}
            kwargs["block_masks"] = {w: flex_block_mask(batch, time, w, document_ids, input_ids.device)
                                     for w in windows}
        for block in self.model.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False, **kwargs)
            else:
                x = block(x, cos, sin, **kwargs)
        if cache is not None:
            cache.end_step(lengths)
        if labels is not None:
            return self._loss_sum(self.model.norm, self.lm_head, x, labels)
        return self.lm_head(self.model.norm(x))

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step for every sequence: ``tokens`` (batch,) -> next-token logits (batch, vocab).

        Same result as ``forward(tokens[:, None], cache=cache)[:, -1]``, with static shapes and no host
        synchronisation, so ``torch.compile(model.decode)`` makes one graph of the whole step."""
        positions = cache.lengths[:, None]
        x = self.model.embed_tokens(tokens[:, None])
        cos, sin = self.model.rotary(positions, x.dtype)
        cache.begin_decode(positions)
        backend = "dense" if self.attention_backend == "dense" else "sdpa"
        for block in self.model.layers:
            x = block(x, cos, sin, backend=backend, document_ids=None, cache=cache)
        cache.lengths += 1
        cache._step = {}
        return self.lm_head(self.model.norm(x))[:, -1]

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        return KVCache(self.config, batch, max_length, device=self.device, dtype=self.lm_head.weight.dtype)

    # Hugging Face-style persistence (see opencwm.model.hf).
    @classmethod
    def from_pretrained(cls, path, *, device="cpu", dtype=None) -> CWM:
        from opencwm.model.hf import load_pretrained

        return load_pretrained(path, cls, device=device, dtype=dtype)

    def save_pretrained(self, path, *, max_shard_bytes: int = 5 * 1024**3) -> None:
        from opencwm.model.hf import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)


def loss_sum(norm: nn.Module, lm_head: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) of the final hidden states ``x`` against ``labels``; in fp32 CPU
    training through the chunked output layer of :mod:`opencwm.model.linear_cross_entropy`."""
    hidden = norm(x)
    if (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and hidden.requires_grad
            and not torch.is_autocast_enabled("cpu")):
        return linear_cross_entropy(hidden, lm_head.weight, labels)
    logits = lm_head(hidden)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def _positions(document_ids, batch, time, device):
    steps = torch.arange(time, device=device).expand(batch, time)
    if document_ids is None:
        return steps
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.cummax(torch.where(starts, steps, torch.zeros_like(steps)), dim=1).values
    return steps - start_index

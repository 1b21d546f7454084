"""Model FLOPs for MFU (model FLOPs utilisation): the work a training step must do, against the card's peak.

Per trained token: 6 x the parameters of the linear layers (attention and MLP projections, output head; embedding
lookups are free) for the forward and backward matmuls, plus 12 x heads x head_dim x (keys a query attends to)
per layer for the attention scores and their use. Keys are counted exactly for causal attention: on average half
the sequence on global layers, and on local layers ``w - w^2 / 2T`` for a window ``w < T``. (PaLM's and
torchtitan's formula counts the full ``T`` on every layer, which would report a higher MFU.) Packed documents
attend to fewer keys still; MFU counts the plain causal figure, so it is comparable across data.
"""

from __future__ import annotations

from opencwm.model.config import SLIDING, CwmConfig

# Dense bf16 peak of each card, TFLOP/s (vendor datasheets, SXM parts; no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flops_per_token(config: CwmConfig, seq_len: int, *, causal: bool = True) -> float:
    """Training FLOPs (forward + backward) per token for sequences of ``seq_len`` tokens; ``causal=False`` gives
    PaLM's and torchtitan's count (the whole sequence on every layer)."""
    if not causal:
        return 6 * config.num_linear_parameters + 12 * config.num_attention_heads * config.head_dim \
            * config.num_hidden_layers * seq_len
    attended = sum(_mean_keys(config.sliding_window if kind == SLIDING else seq_len, seq_len)
                   for kind in config.layer_types)
    return 6 * config.num_linear_parameters + 12 * config.num_attention_heads * config.head_dim * attended


def _mean_keys(window: int, seq_len: int) -> float:
    """Mean number of keys a causal query sees within ``window`` over a sequence of ``seq_len``."""
    m = min(window, seq_len)
    return (m * m / 2 + (seq_len - m) * m) / seq_len


def peak_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s from its name (``torch.cuda.get_device_name()``), None if unknown."""
    return next((tflops * 1e12 for card, tflops in PEAK_BF16_TFLOPS.items() if card in device_name), None)


def cuda_peak_flops() -> float | None:
    """This process's CUDA device's bf16 peak, None without CUDA or for an unknown card."""
    import torch

    return peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None

"""Weight-only quantization of the transformer's linear layers: int8 per output channel (CPU and GPU) and fp8
(e4m3, per output channel; GPU matmuls through ``torch._scaled_mm`` where the card supports it, dequantized
elsewhere). Embeddings and norms stay in full precision.

    quantize(model, "int8")   # in place; returns the model
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "fp8")
_FP8_MAX = 448.0  # largest finite float8_e4m3fn


class QuantLinear(nn.Module):
    """y = x W^T with W stored as int8 or fp8 and one scale per output channel."""

    def __init__(self, weight: torch.Tensor, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown quantization {mode!r} (choose from {', '.join(MODES)})")
        self.mode = mode
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        w = weight.detach().float()
        amax = w.abs().amax(dim=1).clamp(min=1e-12)
        if mode == "int8":
            scale = amax / 127.0
            q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        else:
            scale = amax / _FP8_MAX
            q = (w / scale[:, None]).to(torch.float8_e4m3fn)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fp8" and x.is_cuda and _scaled_mm_supported(x.device):
            return _fp8_matmul(x, self.weight, self.scale)
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, mode={self.mode}"


def _scaled_mm_supported(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    x_scale = (x2.abs().amax(dim=1, keepdim=True).float() / _FP8_MAX).clamp(min=1e-12)
    xq = (x2.float() / x_scale).to(torch.float8_e4m3fn)
    out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=scale.float()[None, :], out_dtype=x.dtype)
    return out.reshape(*shape[:-1], -1)


def quantize(model: nn.Module, mode: str, *, include_lm_head: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` (the output head too, unless told otherwise) by a ``QuantLinear``."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and (include_lm_head or full != "lm_head"):
                setattr(module, child_name, QuantLinear(child.weight, mode))
    return model


def weight_bytes(num_linear: int, num_other: int, mode: str | None) -> int:
    """Bytes of weights: ``num_linear`` parameters in linear layers, ``num_other`` elsewhere (kept in bf16)."""
    per_linear = {"int8": 1, "fp8": 1, "bf16": 2, None: 2}[mode]
    return num_linear * per_linear + num_other * 2

"""Checks that need a GPU (FlexAttention on CUDA, fp8 matmuls); they skip cleanly without CUDA, as on CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opencwm.model.attention import dense_attention, flex_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parent.parent


@cuda
def test_flex_attention_on_cuda_matches_dense_reference():
    torch.manual_seed(0)
    t = 1000
    q = torch.randn(2, 8, t, 64, device="cuda")
    k, v = torch.randn(2, 2, t, 64, device="cuda"), torch.randn(2, 2, t, 64, device="cuda")
    docs = torch.tensor([[0] * 300 + [1] * 700, [0] * 5 + [1] * 900 + [2] * 95], device="cuda")
    for document_ids in (None, docs):
        for window in (128, None):
            expected = dense_attention(q, k, v, window=window, document_ids=document_ids)
            got = flex_attention(q, k, v, window=window, document_ids=document_ids)
            assert (expected - got).abs().max() < 1e-4


@cuda
def test_fp8_scaled_matmul_is_close_to_the_dequantized_weights():
    from opencwm.model.quant import QuantLinear

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need compute capability 8.9+")
    layer = torch.nn.Linear(256, 512, bias=False).cuda().to(torch.bfloat16)
    quantized = QuantLinear(layer.weight, "fp8").cuda()
    x = torch.randn(16, 256, device="cuda", dtype=torch.bfloat16)
    fast = quantized(x)
    slow = torch.nn.functional.linear(x, quantized.weight.to(x.dtype)) * quantized.scale.to(x.dtype)
    assert ((fast - slow).abs().max() / slow.abs().max()) < 0.1


@pytest.mark.slow
def test_mfu_benchmark_runs_end_to_end_on_cpu():
    """Keeps the GPU benchmark from rotting: the same script on the CPU with a tiny preset."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mfu_bench.py"), "--device", "cpu",
                          "--preset", "nano", "--seq", "128", "--steps", "2", "--no-write"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tok/s" in out.stdout

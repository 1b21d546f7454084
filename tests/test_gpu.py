"""Checks that need a GPU (FlexAttention on CUDA with gradients, fp8 matmuls, FSDP2 over NCCL, MFU in the training
metrics); they skip cleanly without CUDA, as on CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchrun_job

from opencwm.model import CWM, preset
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
def test_model_with_flex_attention_matches_sdpa_in_logits_and_gradients():
    """The whole model on the GPU: shared per-forward block masks, compiled blocks, packed documents, a window
    shorter than the sequence; FlexAttention against the SDPA backend, forward and backward, fp32."""
    config = preset("nano", max_position_embeddings=1024)
    ids = torch.randint(0, config.vocab_size, (2, 700), generator=torch.Generator().manual_seed(0)).cuda()
    docs = torch.tensor([[0] * 150 + [1] * 550, [0] * 9 + [1] * 600 + [2] * 91]).cuda()

    def run(backend, compile_blocks):
        with torch.device("cuda"):
            model = CWM(config).init_weights(seed=1)
        model.attention_backend = backend
        if compile_blocks:
            model.compile_blocks()
        logits = model(ids, document_ids=docs)
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), [p.grad for p in model.parameters()]

    reference, reference_grads = run("sdpa", False)
    for compile_blocks in (False, True):
        logits, grads = run("flex", compile_blocks)
        assert (logits - reference).abs().max() < 1e-4
        for got, expected in zip(grads, reference_grads):
            assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


@cuda
def test_inference_at_many_lengths_on_cuda_matches_the_dense_reference_without_uncompiled_flex():
    """Evaluation calls the model at a new length each time; more lengths than dynamo's recompile limit must
    neither fall back to uncompiled FlexAttention (which materialises the whole score matrix) nor change logits."""
    import warnings

    config = preset("nano", max_position_embeddings=1024)
    with torch.device("cuda"):
        model = CWM(config).init_weights(seed=1).eval()
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        for length in range(100, 100 + 13 * 37, 37):
            ids = torch.randint(0, config.vocab_size, (1, length), generator=generator).cuda()
            model.attention_backend = None
            got = model(ids)
            model.attention_backend = "dense"
            assert (got - model(ids)).abs().max() < 1e-4
    assert not [w for w in caught if "without torch.compile" in str(w.message)]


@cuda
def test_compiled_labels_loss_in_bf16_matches_cross_entropy_of_the_logits():
    """The training path on the GPU (bf16 autocast, FlexAttention, compiled blocks and compiled loss through
    ``labels=``) gives the loss and gradients of an fp32 cross-entropy over the eager model's logits."""
    config = preset("nano", max_position_embeddings=1024)
    ids = torch.randint(0, config.vocab_size, (2, 700), generator=torch.Generator().manual_seed(0)).cuda()
    docs = torch.tensor([[0] * 150 + [1] * 550, [0] * 9 + [1] * 600 + [2] * 91]).cuda()
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)

    def run(compiled):
        with torch.device("cuda"):
            model = CWM(config).init_weights(seed=1)
        if compiled:
            model.compile_blocks()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if compiled:
                loss = model(ids, document_ids=docs, labels=labels)
            else:
                logits = model(ids, document_ids=docs).float()
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters()])

    (expected, expected_grads), (got, grads) = run(False), run(True)
    assert abs(got - expected) < 1e-3 * abs(expected)
    assert torch.nn.functional.cosine_similarity(grads, expected_grads, dim=0) > 0.999


@cuda
def test_fsdp2_training_over_nccl_reports_mfu_and_resumes(tmp_path):
    """The training loop under torchrun with one process per GPU (NCCL), FSDP2-sharded, bf16 autocast: it trains,
    its metrics carry MFU, and a run stopped at step 3 and resumed ends with the same weights."""
    nproc = torch.cuda.device_count()
    reports = torchrun_job(tmp_path / "straight", 6, nproc)
    assert [r["world"] for r in reports] == [nproc] * nproc
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[-1]["loss"] < lines[0]["loss"]
    if "H100" in torch.cuda.get_device_name() or "H200" in torch.cuda.get_device_name():
        assert all(0 < line["mfu"] < 1 for line in lines)
    torchrun_job(tmp_path / "resumed", 3, nproc)
    assert all(r["resumed"] for r in torchrun_job(tmp_path / "resumed", 6, nproc))
    a = CWM.from_pretrained(tmp_path / "straight" / "checkpoints" / "step-000006" / "model").state_dict()
    b = CWM.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-000006" / "model").state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


@cuda
def test_vllm_loads_a_saved_checkpoint_with_the_same_probabilities(tmp_path, monkeypatch):
    """What ``save_pretrained`` writes, vLLM serves: the log-probability of every prompt token (prompts longer than
    the sliding window) matches opencwm's fp32 forward, within bf16 precision. Skips where vLLM is not installed."""
    vllm = pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    config = preset("nano", max_position_embeddings=1024)
    model = CWM(config).init_weights(seed=3)
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, config.vocab_size, (3, 200), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # on the CPU, before vLLM takes the GPU
        expected = torch.log_softmax(model(ids).float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    llm = vllm.LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=True,
                   gpu_memory_utilization=0.3, max_model_len=1024)
    outputs = llm.generate([{"prompt_token_ids": row.tolist()} for row in ids],
                           vllm.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    for row, output, want in zip(ids, outputs, expected):
        got = torch.tensor([step[int(token)].logprob for step, token in zip(output.prompt_logprobs[1:], row[1:])])
        assert (got - want).abs().max() < 0.1


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


@cuda
def test_a_run_trained_on_cuda_resumes_on_the_cpu(tmp_path):
    """Checkpoints written on a GPU load on a machine without one: the optimizer state comes back onto the
    parameters' device, and the resumed run ends close to the same run continued on the GPU (fp32 both ways)."""
    from test_train import _config, _model, _stream

    from opencwm.train.loop import Trainer

    def trainer(device: str, steps: int, out) -> Trainer:
        with torch.device(device):
            model = _model()
        return Trainer(model, _stream(), _config(steps=steps, precision="fp32"), out)

    trainer("cuda", 3, tmp_path / "gpu").train(progress=False)
    straight = trainer("cuda", 6, tmp_path / "gpu")
    assert straight.resume() and straight.step == 3
    straight.train(progress=False)

    first = trainer("cuda", 3, tmp_path / "moved")
    first.train(progress=False)
    moved = trainer("cpu", 6, tmp_path / "moved")
    assert moved.resume() and moved.step == 3
    states = [s for o in moved.optimizer.optimizers for s in o.state.values()]
    assert states and all(t.device.type == "cpu" for s in states for t in s.values() if torch.is_tensor(t) and t.ndim)
    moved.train(progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), moved.model.state_dict().values()):
        assert torch.allclose(a.cpu(), b, atol=1e-3, rtol=1e-3), name

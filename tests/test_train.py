"""The training loop: it learns, its schedules have the right shape, and an interrupted run resumed from its
checkpoint ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import torchrun_job

from opencwm.data.packing import Document, PackedStream
from opencwm.model import CWM, preset
from opencwm.train.loop import TrainConfig, Trainer, learning_rate


def _stream(seed: int = 0) -> PackedStream:
    rng = random.Random(0)
    # a learnable language: counting sequences with random starts and strides
    docs = []
    for _ in range(200):
        start, stride = rng.randint(0, 50), rng.randint(1, 3)
        docs.append(Document([(start + stride * i) % 97 for i in range(rng.randint(5, 30))]))
    return PackedStream({"count": docs}, {"count": 1.0}, seq_len=64, seed=seed)


def _model(zero_residual: bool = False) -> CWM:
    torch.manual_seed(0)
    return CWM(preset("nano", vocab_size=97, max_position_embeddings=128)).init_weights(
        seed=0, zero_residual=zero_residual)


def _config(**kwargs) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 3,
                          "log_every": 1, **kwargs})


def test_schedules():
    wsd = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    assert learning_rate(0, wsd) == pytest.approx(0.1) and learning_rate(9, wsd) == pytest.approx(1.0)
    assert learning_rate(50, wsd) == 1.0 and learning_rate(79, wsd) == 1.0
    assert learning_rate(99, wsd) == pytest.approx(0.1 + 0.9 * (1 / 20))
    cosine = TrainConfig(steps=100, lr=1.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert learning_rate(0, cosine) == pytest.approx(1.0) and learning_rate(50, cosine) == pytest.approx(0.5)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_goes_down(tmp_path, optimizer):
    trainer = Trainer(_model(zero_residual=optimizer == "muon"), _stream(),
                      _config(steps=60, checkpoint_every=1000, log_every=10, optimizer=optimizer), tmp_path)
    trainer.train(progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, optimizer):
    straight = Trainer(_model(), _stream(), _config(grad_accum=2, optimizer=optimizer), tmp_path / "straight")
    straight.train(progress=False)

    first = Trainer(_model(), _stream(), _config(grad_accum=2, steps=3, optimizer=optimizer), tmp_path / "resumed")
    first.train(progress=False)  # stops after step 3, with a checkpoint
    second = Trainer(_model(), _stream(), _config(grad_accum=2, optimizer=optimizer), tmp_path / "resumed")
    assert second.resume() and second.step == 3
    second.train(progress=False)

    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-000006"
    assert not list((tmp_path / "resumed" / "checkpoints").glob(".*tmp"))
    # the checkpoint's model is a Hugging Face checkpoint
    reloaded = CWM.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-000006" / "model")
    assert torch.equal(reloaded.lm_head.weight, second.model.lm_head.weight)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tmp_path):
    model = _model()
    trainer = Trainer(model, _stream(), _config(optimizer="muon", lr=1e-3, muon_lr=0.05), tmp_path)
    muon, adamw = trainer.optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        expected = parameter.ndim == 2 and name.startswith("model.layers.")
        assert (id(parameter) in in_muon) == expected, name
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(model.parameters()))
    trainer.optimizer.set_lr_scale(0.5)
    assert [g["lr"] for g in muon.param_groups] == [0.025] and {g["lr"] for g in adamw.param_groups} == {5e-4}
    # a checkpoint of one optimizer kind does not resume under the other
    trainer.train(progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(_model(), _stream(), _config(), tmp_path).resume()
    with pytest.raises(ValueError, match="FSDP2"):
        from opencwm.train.optim import build_optimizer

        build_optimizer(model, kind="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.0, betas=(0.9, 0.95),
                        distributed=True)


def test_zero_residual_init_makes_every_block_the_identity():
    model = _model(zero_residual=True).eval()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        by_hand = model.lm_head(model.model.norm(model.model.embed_tokens(ids)))
        assert torch.allclose(model(ids), by_hand, atol=1e-6)
    assert all(not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
               for layer in model.model.layers)
    assert _model().model.layers[0].mlp.down_proj.weight.any()


def test_two_process_fsdp2_training_shards_and_resumes_exactly(tmp_path):
    reports = torchrun_job(tmp_path / "straight", 6)
    assert [r["world"] for r in reports] == [2, 2]
    assert all(r["local_rows"] * 2 == r["full_rows"] for r in reports)  # every rank holds half of each weight
    torchrun_job(tmp_path / "resumed", 3)
    assert all(r["resumed"] for r in torchrun_job(tmp_path / "resumed", 6))
    a = CWM.from_pretrained(tmp_path / "straight" / "checkpoints" / "step-000006" / "model").state_dict()
    b = CWM.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-000006" / "model").state_dict()
    initial = CWM(preset("nano", vocab_size=97, max_position_embeddings=128)).init_weights(seed=0).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert not torch.allclose(a["lm_head.weight"], initial["lm_head.weight"])  # it did train
    losses = [json.loads(line)["loss"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_train_cli_pretrain_resume_then_midtrain(tmp_path):
    import subprocess
    import sys

    from opencwm.data.corpora import build_code_corpus, build_program_corpus
    from opencwm.trace.collect import CollectConfig, collect

    build_code_corpus(tmp_path / "code", include_site_packages=False, max_files=40)
    build_program_corpus(tmp_path / "programs", 40, difficulty=1)
    collect(tmp_path / "programs", tmp_path / "traces", CollectConfig(workers=2, progress=False))

    def opencwm(*args):
        result = subprocess.run([sys.executable, "-m", "opencwm.cli", "train", "--quiet", "--batch-size", "2",
                                 "--seq-len", "128", "--checkpoint-every", "4", *args],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr

    data = ["--data", f"code={tmp_path / 'code'}:0.5", "--data", f"traces={tmp_path / 'traces'}:0.5"]
    first, _ = opencwm("--preset", "nano", "--vocab", "600", "--out", str(tmp_path / "pt"), "--steps", "4", *data)
    again, log = opencwm("--preset", "nano", "--out", str(tmp_path / "pt"), "--steps", "8", *data)
    assert first["step"] == 4 and again["step"] == 8 and "resumed from step 4" in log
    mid, _ = opencwm("--stage", "midtrain", "--init", f"{again['checkpoint']}/model", "--tokenizer",
                     str(tmp_path / "pt" / "tokenizer"), "--out", str(tmp_path / "mid"), "--steps", "4",
                     "--data", f"traces={tmp_path / 'traces'}", "--optimizer", "muon")
    assert mid["stage"] == "midtrain" and mid["step"] == 4
    assert _tokenizer_loads(tmp_path / "mid" / "tokenizer")
    # A checkpoint's model folder alone is a Hugging Face model with its tokenizer (what vLLM serves), and its
    # config names the tokenizer's begin and end of text.
    transformers = pytest.importorskip("transformers")
    folder = Path(mid["checkpoint"]) / "model"
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.vocab_size == len(reference)
    assert config.bos_token_id == reference.bos_token_id and reference.eos_token_id in config.eos_token_id
    bad = subprocess.run([sys.executable, "-m", "opencwm.cli", "train", "--out", str(tmp_path / "x"), "--data",
                          "oops"], capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME=DIR" in bad.stderr


def _tokenizer_loads(path) -> bool:
    from opencwm.tokenizer import Tokenizer

    return Tokenizer.load(path).vocab_size > 256


def test_compiled_training_matches_eager_training(tmp_path):
    """``compile=True`` (compiled blocks and loss kernel, as the speedrun trains) computes the same losses and
    weights as eager training, and writes the same checkpoint layout."""
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(_model(), _stream(), _config(steps=4, precision="fp32", compile=compiled),
                          tmp_path / str(compiled))
        trainer.train(progress=False)
        runs[compiled] = trainer
    losses = {c: [json.loads(line)["loss"] for line in (tmp_path / str(c) / "metrics.jsonl").read_text().splitlines()]
              for c in runs}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    eager, compiled = runs[False].model.state_dict(), runs[True].model.state_dict()
    assert list(eager) == list(compiled)
    for name in eager:
        assert torch.allclose(eager[name], compiled[name], atol=1e-4), name


def test_fit_scale_fills_the_budget_without_passing_it_and_never_scales_up():
    from opencwm.train.budget import Speed, fit_scale

    speed = Speed(step_seconds=2.0, startup_seconds=30.0, decode_seconds=0.01, tokens_per_step=4096)
    scale = fit_scale(900, seconds_left=1800, runs=2, speed=speed, eval_seconds=120)
    used = 2 * (30 + 120 + scale * 900 * 2.0)  # two runs: start-up, evaluation, the scaled steps
    assert 0 < scale < 1 and 0.8 * 1800 <= used <= 1800
    assert fit_scale(10, seconds_left=1800, runs=2, speed=speed, eval_seconds=120) == 1.0
    assert fit_scale(900, seconds_left=100, runs=2, speed=speed, eval_seconds=120) == 0.0


def test_measure_speed_times_real_steps_on_the_stream_and_decodes_with_another_model():
    from opencwm.train.budget import measure_speed

    made: list[CWM] = []

    def new_model() -> CWM:
        made.append(_model())
        return made[-1]

    stream = _stream()
    speed = measure_speed(new_model, _config(), stream, decode_batch=2, steps=2, prompt_tokens=16, decode_steps=8)
    assert speed.step_seconds > 0 and speed.decode_seconds > 0 and speed.startup_seconds >= 0
    assert speed.tokens_per_step == 4 * 64 and speed.tokens_per_second == 4 * 64 / speed.step_seconds
    assert len(made) == 2 and not torch.equal(made[0].lm_head.weight, made[1].lm_head.weight)  # one trained
    assert stream.state_dict() != _stream().state_dict()  # 3 steps' batches were drawn from it


def test_muon_in_fp32_follows_torchs_muon_and_orthogonalises_as_torch_does_in_bf16():
    from torch.optim._muon import _zeropower_via_newtonschulz

    from opencwm.train.optim import Muon

    torch.manual_seed(0)
    shapes = [(64, 192), (192, 64), (48, 48)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    fp32 = Muon(ours, lr=0.02, weight_decay=0.1, adjust_lr_fn="original", ns_dtype=torch.float32)
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for params, optimizer in ((ours, fp32), (theirs, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, theirs):  # the same updates up to bf16 rounding in torch's iterations
        assert (a - b).abs().max() < 0.02 * 0.02 * 3 and not torch.equal(a, b)
    assert set(fp32.state_dict()["state"][0]) == set(reference.state_dict()["state"][0]) == {"momentum_buffer"}
    group = fp32.param_groups[0]
    for shape in shapes:  # the iteration itself, in bf16, is torch's exactly
        g = torch.randn(shape)
        bf16 = Muon([torch.nn.Parameter(torch.zeros(shape))], ns_dtype=torch.bfloat16)
        expected = _zeropower_via_newtonschulz(g, group["ns_coefficients"], group["ns_steps"], group["eps"])
        assert torch.equal(bf16._orthogonalise(g, group), expected)

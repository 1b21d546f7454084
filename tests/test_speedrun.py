"""The speedrun pipeline end to end at a toy size (make test-slow): every stage runs, the report has its keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TOY_SPEEDRUN = [sys.executable, "-m", "opencwm.cli", "speedrun", "--preset", "nano", "--train-programs", "60",
                "--heldout-programs", "6", "--code-files", "30", "--vocab", "400", "--seq-len", "256",
                "--batch-size", "2", "--pretrain-steps", "4", "--midtrain-steps", "4", "--sft-steps", "4",
                "--eval-traces", "3", "--max-trace-tokens", "64"]


@pytest.mark.slow
def test_speedrun_end_to_end_at_toy_size(tmp_path):
    result = subprocess.run(
        [*TOY_SPEEDRUN, "--out", str(tmp_path), "--cruxeval", str(tmp_path / "absent.jsonl"), "--repo-test-files", "2",
         "--time-budget", "1", "--rl-steps", "2"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # a budget already spent on building the data: speed measured, nothing fits, so the floor is trained (a tenth
    # of the recipe, here one step per stage), said loudly before training and in the report
    plan = report["plan"]
    assert plan["speed"]["step_seconds"] > 0 and plan["fitted_scale"] == 0 and plan["below_floor"] is True
    assert plan["scale"] == 0.1 and plan["steps"] == {"pretrain_steps": 1, "midtrain_steps": 1, "sft_steps": 1}
    assert "WARNING" in result.stderr and "below the floor" in result.stderr
    assert plan["evaluation"] == {"eval_traces": 3, "cruxeval_limit": 10}  # the evaluation is cut to fit, too
    assert json.loads((tmp_path / "plan.json").read_text()) == plan
    metrics = (tmp_path / "no_traces" / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1]  # the ablation trains the same plan
    assert "Steps scaled by 0.100 to fit: 3 of the recipe's 12 per run" in (tmp_path / "report.md").read_text()
    assert "**Below the floor**" in (tmp_path / "report.md").read_text()
    again = subprocess.run([*TOY_SPEEDRUN, "--out", str(tmp_path), "--cruxeval", str(tmp_path / "absent.jsonl"),
                            "--repo-test-files", "2", "--time-budget", "1", "--rl-steps", "2"], capture_output=True,
                           text=True, timeout=1200)
    assert again.returncode == 0 and "resuming the plan" in again.stderr  # a resumed plan is announced
    for key in ("frame_exact_match", "output_exact_match_rollout", "output_exact_match_direct",
                "output_exact_match_chat", "cruxeval_o_direct",
                "cruxeval_o_rollout", "copying_accuracy", "wall_seconds"):
        assert key in report and key in report["no_traces"]
    assert report["cruxeval_o_direct"] is None and "no such file" in report["cruxeval_missing"]
    # the RL stage: two steps from the SFT checkpoint, held-out output prediction before and after, in the report
    rl_rows = (tmp_path / "traces" / "rl" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rl_rows] == [1, 2]
    assert report["rl_output_before"]["items"] == report["rl_output_after"]["items"] > 0
    assert "RL stage (2 GRPO-style steps" in (tmp_path / "report.md").read_text()
    assert "rl_steps" not in report["no_traces"]  # the ablation has no RL stage
    assert 0 <= report["frame_exact_match"] <= 1
    assert (tmp_path / "report.md").read_text().startswith("# opencwm CPU speedrun")
    assert {"name", "line", "format"} <= set(report["frame_token_accuracy_by_kind"])
    assert "Frame tokens right by kind" in (tmp_path / "report.md").read_text()
    if_right = report["frame_exact_match_if_right"]  # a kind always right can only add exact frames
    assert all(if_right[kind] >= report["frame_exact_match"] for kind in ("line", "value", "name"))
    assert "Frame exact match if one kind of token were always right" in (tmp_path / "report.md").read_text()
    results = json.loads((tmp_path / "traces" / "results.json").read_text())
    # midtraining and SFT read sequences twice the run's length, at its tokens per step; each stage's step is timed
    assert results["stage_shapes"] == {"pretrain": [256, 2], "midtrain": [512, 1], "sft": [512, 1]}
    assert set(plan["stage_step_seconds"]) == {"pretrain", "midtrain", "sft"}
    assert "2 x 256 tokens in pretrain, 1 x 512 in midtrain and sft" in (tmp_path / "report.md").read_text()
    by_position = report["frame_exact_match_by_position"]  # buckets double from the training sequence length
    assert all(int(edge) / results["config"]["seq_len"] in (1, 2, 4, 8, 16, 32) for edge in by_position)
    assert sum(total for _, total in by_position.values()) == results["frames"]
    assert sum(right for right, _ in by_position.values()) == round(report["frame_exact_match"] * results["frames"])
    assert "Frame exact match by where the frame ends in its trace" in (tmp_path / "report.md").read_text()
    assert "In chat, where both models were fine-tuned to answer:" in (tmp_path / "report.md").read_text()
    # repository-level traces of networkx's own tests are a training source
    assert report["sources"]["repo_traces"]["documents"] > 0
    assert "calls that networkx's own tests make" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "accuracy.png").stat().st_size > 1000
    # the learning curve: a point at the end of pretraining and at midtraining's checkpoint, for both runs
    for points in report["learning_curve"].values():
        assert [(p["stage"], p["step"], p["tokens"]) for p in points] == [("pretrain", 1, 512), ("midtrain", 1, 1024)]
        assert all(0 <= p[key] <= 1 for p in points for key in ("frame_exact_match", "copying_accuracy",
                                                                  "output_exact_match_direct"))
    assert set(report["learning_curve"]) == {"with_traces", "no_traces"}
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert "Learning curve (" in (tmp_path / "report.md").read_text()
    # recipe_sweep --init: a variant continues the run's midtrained weights for its SFT stage alone and is scored
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps([{"name": "sft_only", "tokens": 6144, "pretrain_steps": 0, "midtrain_steps": 0,
                                     "sft_steps": 100, "stage_settings": {"sft": {"lr_factor": 0.5}}}]))
    sweep = subprocess.run([sys.executable, "benchmarks/recipe_sweep.py", "--data", str(tmp_path / "shared"),
                            "--variants", str(variants), "--init", str(tmp_path / "traces" / "midtrain"),
                            "--out", str(tmp_path / "sweep.jsonl"), "--work", str(tmp_path / "sweep"),
                            "--no-record"], capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    row = json.loads((tmp_path / "sweep.jsonl").read_text())
    assert row["steps"] == {"pretrain": 0, "midtrain": 0, "sft": 3} and row["init"].endswith("midtrain")
    assert {"frame_exact_match", "output_exact_match_direct", "output_exact_match_chat"} <= set(row)
    assert not (tmp_path / "sweep" / "sft_only" / "pretrain").exists()  # no stage trained but SFT
    # tokens per frame by vocabulary size, on the run's data: a larger vocabulary gives no more tokens
    sizes = subprocess.run([sys.executable, "benchmarks/vocab_tokens.py", "--data", str(tmp_path / "shared"),
                            "--sizes", "300,600", "--no-record"], capture_output=True, text=True, timeout=600)
    assert sizes.returncode == 0, sizes.stderr[-3000:]
    medians = [float(line.split("frame median ")[1].split(",")[0]) for line in sizes.stdout.splitlines()]
    assert len(medians) == 2 and medians[1] <= medians[0]


def test_repository_traces_are_used_when_the_package_is_installed_and_never_in_the_ablation():
    from pathlib import Path

    from opencwm.speedrun import SpeedrunConfig, _package_dir, _stage_sources

    assert _package_dir("networkx") == Path(__import__("networkx").__file__).parent
    assert _package_dir("no_such_package_here") is None and _package_dir("json.no_such") is None
    config = SpeedrunConfig()
    with_repo = _stage_sources(config, "midtrain", {"repo_traces": Path("x")})
    without = _stage_sources(config, "midtrain", {})
    assert "repo_traces" in with_repo and "repo_traces" not in without
    ablation = SpeedrunConfig(traces=False)
    assert all("traces" not in name for stage in ("pretrain", "midtrain", "sft")
               for name in _stage_sources(ablation, stage, {"repo_traces": Path("x")}))


def test_the_plan_keeps_the_recipe_without_a_budget_and_a_negative_budget_is_refused(tmp_path):
    from opencwm.speedrun import SpeedrunConfig, plan_steps

    config = SpeedrunConfig(out=str(tmp_path), time_budget=0, pretrain_steps=3, midtrain_steps=0, sft_steps=2)
    plan = plan_steps(config, {}, None, {}, seconds_left=0, runs=2)
    assert plan["steps"] == {"pretrain_steps": 3, "midtrain_steps": 0, "sft_steps": 2} and plan["scale"] == 1
    with pytest.raises(ValueError, match="--time-budget -1"):
        SpeedrunConfig(time_budget=-1)


def test_a_slow_machine_gives_up_midtraining_steps_before_the_drills_that_form_the_heads():
    from opencwm.speedrun import MIN_DRILL_STEPS, SpeedrunConfig, scaled_steps

    recipe = {"pretrain_steps": 1050, "midtrain_steps": 650, "sft_steps": 100}
    seconds = {"pretrain": 0.4, "midtrain": 0.5, "sft": 0.5}
    budget = lambda steps: sum(steps[f"{stage}_steps"] * s for stage, s in seconds.items())
    scaled = lambda recipe, scale: scaled_steps(recipe, seconds, scale, drill_floor=700)
    # a fast machine scales every stage alike, the drills staying above their floor
    assert scaled(recipe, 0.9) == {"pretrain_steps": 945, "midtrain_steps": 585, "sft_steps": 90}
    # a slow one keeps the drills' floor, the rest scaled to the same time: (0.5 * 795 - 700 * 0.4) / 375 = 0.313
    slow = scaled(recipe, 0.5)
    assert slow == {"pretrain_steps": 700, "midtrain_steps": 204, "sft_steps": 31}
    assert budget(slow) == pytest.approx(0.5 * budget(recipe), rel=0.01)
    # too slow to keep the floor and a tenth of the later stages: every stage alike again
    assert scaled(recipe, 0.3) == {"pretrain_steps": 315, "midtrain_steps": 195, "sft_steps": 30}
    # a recipe with fewer drills than the floor keeps them all; one without drills is scaled alike
    assert scaled({**recipe, "pretrain_steps": 400}, 0.5)["pretrain_steps"] == 400
    assert scaled({**recipe, "pretrain_steps": 0}, 0.5) == {
        "pretrain_steps": 0, "midtrain_steps": 325, "sft_steps": 50}
    # the speedrun's recipe never scales its drills: they are the floor
    assert SpeedrunConfig().pretrain_steps == MIN_DRILL_STEPS


def test_a_device_that_is_not_cpu_or_cuda_is_one_line_and_exit_2_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opencwm.cli", "speedrun", "--out", str(tmp_path / "run"),
                             "--device", "cuda:x"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "opencwm: --device 'cuda:x': cpu, cuda or cuda:N"
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.slow
def test_speedrun_trains_and_evaluates_on_cuda(tmp_path):
    result = subprocess.run(
        [*TOY_SPEEDRUN, "--out", str(tmp_path), "--device", "cuda", "--cruxeval", "none", "--repo-package", "none",
         "--no-ablation"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "report.json").read_text())["frame_exact_match"] <= 1


def test_each_speedrun_stage_is_an_opencwm_train_command(tmp_path):
    """README writes each stage of the speedrun as ``opencwm train --data NAME=DIR:WEIGHT ...``: the command's
    sources, parsed as the command parses them, pack into the same batches as the recipe's mixture."""
    import torch

    from opencwm.data.corpora import build_code_corpus, build_program_corpus
    from opencwm.data.documents import source_documents, texts
    from opencwm.data.packing import PackedStream
    from opencwm.speedrun import (
        STAGES,
        SpeedrunConfig,
        _stage_sources,
        source_path,
        stage_shape,
        stage_train_config,
        training_documents,
    )
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.collect import CollectConfig, collect
    from opencwm.train.cli import _parse_data

    build_code_corpus(tmp_path / "code", include_site_packages=False, max_files=30)
    build_program_corpus(tmp_path / "programs", 30, difficulty=1)
    collect(tmp_path / "programs", tmp_path / "traces", CollectConfig(workers=2, progress=False))
    paths = {"code": tmp_path / "code", "traces": tmp_path / "traces"}
    tokenizer = Tokenizer.train(texts(paths["code"]) + texts(paths["traces"]), vocab_size=400)
    for traces in (True, False):  # the run and its ablation
        config = SpeedrunConfig(seq_len=128, traces=traces)
        docs = training_documents(config, paths, tokenizer)
        for stage in STAGES:
            weights = _stage_sources(config, stage, paths)
            recipe = PackedStream({name: docs[name] for name in weights}, weights, seq_len=128, seed=0)
            sources = _parse_data([f"{name}={source_path(name, paths)}:{weight}" for name, weight in weights.items()])
            command = PackedStream({name: source_documents(name, path, tokenizer, window=128) for name, (path, _) in
                                    sources.items()}, {name: weight for name, (_, weight) in sources.items()},
                                   seq_len=128, seed=0)
            for _ in range(3):
                mine, theirs = recipe.next_batch(4), command.next_batch(4)
                assert all(torch.equal(mine[key], theirs[key]) for key in mine), (traces, stage)
        # the rates README's commands give, AdamW's beside Muon's: the drills (constant) at ten times the run's rate
        # (--lr 0.03), midtraining at three times (--lr 0.009), SFT at a third of ten times (--lr 0.01 --muon-lr
        # 0.00667)
        sft, midtrain = stage_train_config(config, 100, "sft"), stage_train_config(config, 100, "midtrain")
        assert (sft.lr, sft.muon_lr) == pytest.approx((10 * config.lr / 3, config.muon_lr / 3))
        assert (midtrain.lr, midtrain.muon_lr) == pytest.approx((3 * config.lr, config.muon_lr))
        pretrain = stage_train_config(config, 100, "pretrain")
        assert pretrain.decay_fraction == 0 and (pretrain.lr, pretrain.muon_lr) == (10 * config.lr, config.muon_lr)
    adamw = SpeedrunConfig(optimizer="adamw")  # AdamW alone trains every matrix: the run's rate
    assert {stage_train_config(adamw, 100, stage).lr for stage in ("pretrain", "midtrain")} == {adamw.lr}
    # the sequences README's commands give: drills in 4 x 512 tokens, midtraining and SFT in 2 x 1024 (as many tokens)
    config = SpeedrunConfig()
    assert [stage_shape(config, stage) for stage in STAGES] == [(512, 4), (1024, 2), (1024, 2)]
    assert [stage_train_config(config, 100, stage).batch_size for stage in STAGES] == [4, 2, 2]

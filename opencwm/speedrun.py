"""The CPU speedrun: train a small code world model end to end and measure what execution traces buy.

Steps (each resumable; finished steps are skipped when rerun):
1. corpora: standard-library code; synthetic programs for training and a held-out set from another seed; their
   traces, collected in the sandbox; repository-level traces of an installed package's own test suite (every call
   its tests make into it, with real inputs: ``networkx``, which ships its tests and comes with torch);
2. a byte-level BPE tokenizer with CWM's special tokens, trained on code and traces;
3. pretraining (mostly code), midtraining (mostly traces) and a short SFT (chat examples "what does this call
   return?", with and without a ``<think>`` walk through the execution) of a preset, bf16 autocast where the CPU
   has AMX;
4. evaluation on the held-out programs: next-frame exact match, whole-trace rollout, output prediction by
   rollout, by direct answer and in chat, plus CruxEval-O when a CruxEval file or the public dataset is available;
5. the ablation: the same pipeline and token budget with traces replaced by code, and SFT answers without the
   reasoning section (which is a trace) (``no_traces``);
6. ``report.md`` (tables, loss and accuracy plots) and ``report.json`` (stable keys).

The steps above are the recipe for a fast 2-core machine (about 8k training tokens/s). Machines differ several
fold (bf16 matrix units or not), so before training the speedrun measures a training step and a decoding step
here, estimates the evaluation, and scales every stage's steps down (never up) so that the whole run fits
``time_budget``; the plan is kept in ``plan.json`` (a rerun resumes with it) and stated in the report.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from opencwm.speedrun_eval import CURVE_TRACES, EVAL_BATCH, difficulty_profile, evaluate, evaluation_seconds
from opencwm.speedrun_report import write_report
from opencwm.trace.tracer import Limits


def option(default, help: str):
    """A field of the speedrun's configuration with its ``--help`` text (``opencwm speedrun`` makes an option of
    every field)."""
    return field(default=default, metadata={"help": help})


@dataclass
class SpeedrunConfig:
    out: str = option("runs/speedrun", "output directory (resumed when rerun)")
    preset: str = option("tiny", "model size")
    train_programs: int = option(4000, "synthetic training programs")
    heldout_programs: int = option(100, "held-out programs (another seed of the same generator)")
    difficulty: int = option(1, "programs' difficulty, 1 to 5")
    hard_share: float = option(0.5, "share of programs one difficulty level up (held-out traces longer than "
                                    "CruxEval's)")
    code_files: int = option(600, "standard-library files of the code corpus")
    repo_package: str | None = option("networkx", "an installed package whose own test suite is traced for "
                                                   "repository-level traces, or none")
    repo_test_files: int = option(20, "how many of its test files are run (the first N)")
    vocab: int = 2048
    seq_len: int = 512
    # 4 sequences per step: at the token budgets of slow CPUs more, smaller steps predict frames better (2-core AMD
    # EPYC, same 420 s of training: 77.1% of held-out frame tokens at 4 x 512 against 75.5% at 8 x 512, which
    # trains 12% more tokens per second; benchmarks/RESULTS.md, recipe_sweep)
    batch_size: int = 4
    pretrain_steps: int = 400  # copy drills: the heads form at ~225 steps at AdamW x10 (never scaled below 400)
    midtrain_steps: int = 1300
    sft_steps: int = 100
    lr: float = option(3e-3, "AdamW's learning rate: embeddings, output head, norms (everything with adamw); "
                             "beside Muon the stages train at multiples of it (drills and SFT x10, midtraining x3)")
    optimizer: str = option("muon", "muon (for the blocks' matrices, from zero residual projections) or adamw")
    muon_lr: float = option(0.02, "Muon's learning rate")
    schedule: str = option("cosine", "per stage: warmup, then cosine decay (lower final loss than WSD here) or wsd")
    compile: bool = True  # torch.compile the blocks and the loss: ~1.3x the tokens/s here, after a short compile
    eval_traces: int = option(100, "held-out traces evaluated (fewer make the trace-length p95 noisy; the time "
                                   "budget may cut them)")
    max_trace_tokens: int = 768
    cruxeval: str | None = option("hf", "a CruxEval JSONL, hf (the public dataset) or none")
    cruxeval_limit: int = 50
    traces: bool = True  # False: the ablation (code instead of traces, same token budget)
    # per stage, source name -> share of tokens (None: the recipe's, ``MIXTURES``); for sweeps, not an option
    mixtures: dict | None = field(default=None, metadata={"cli": False})
    # per stage, TrainConfig settings over the recipe's (None: ``STAGE_SETTINGS``); for sweeps, not an option
    stage_settings: dict | None = field(default=None, metadata={"cli": False})
    seed: int = 0
    device: str = option("cpu", "where the model trains and is evaluated: cpu, cuda, cuda:N (the data is built on "
                                "the CPUs)")
    rl_steps: int = option(0, "RL steps after SFT (output prediction of other synthetic programs, rewarded by "
                              "execution; the held-out figures before and after go in the report; not counted in "
                              "--time-budget; 0: none)")
    time_budget: float = option(1800.0, "seconds for everything (data, both runs, their evaluations): the stages' "
                                        "steps are scaled down to fit the speed measured here (0: every step of the "
                                        "recipe, however long)")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device {self.device!r}: cpu, cuda or cuda:N")
        if self.time_budget < 0:
            raise ValueError(f"--time-budget {self.time_budget}: seconds, or 0 for no limit")


def _log(message: str) -> None:
    print(f"[speedrun {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


DATASETS = ("code", "programs", "heldout-programs", "traces", "heldout-traces")  # under shared/data/, by name


def data_paths(shared: Path) -> dict[str, Path]:
    """The datasets in a speedrun's shared folder by name, with ``repo_traces`` when they were collected."""
    paths = {name: shared / "data" / name for name in DATASETS}
    if (shared / "data" / "repo-traces").exists():
        paths["repo_traces"] = shared / "data" / "repo-traces"
    return paths


def build_data(config: SpeedrunConfig, root: Path) -> dict[str, Path]:
    from opencwm.data.corpora import Holdout, build_code_corpus, build_program_corpus
    from opencwm.eval.cruxeval import load_cruxeval
    from opencwm.trace.collect import CollectConfig, collect

    data = root / "data"
    paths = {name: data / name for name in DATASETS}
    holdout = None
    if config.cruxeval:
        items, _ = load_cruxeval(config.cruxeval)
        holdout = Holdout(items) if items else None
    _log("corpus: standard-library code")
    build_code_corpus(paths["code"], include_site_packages=False, max_files=config.code_files, holdout=holdout)
    _log("corpus: synthetic programs (training and held out)")
    build_program_corpus(paths["programs"], config.train_programs, difficulty=config.difficulty, seed=config.seed,
                         hard_share=config.hard_share)
    build_program_corpus(paths["heldout-programs"], config.heldout_programs, difficulty=config.difficulty,
                         seed=config.seed + 1_000_003, hard_share=config.hard_share)
    limits = Limits(max_frames=400, max_bytes=20_000, max_value_chars=200)  # traces that fit the context
    for programs, traces in (("programs", "traces"), ("heldout-programs", "heldout-traces")):
        _log(f"tracing {programs} in the sandbox")
        collect(paths[programs], paths[traces], CollectConfig(limits=limits, progress=False))
    package = _package_dir(config.repo_package) if config.repo_package else None
    if package is not None:
        _log(f"tracing {config.repo_package}'s own tests (first {config.repo_test_files} test files) in the sandbox")
        paths["repo_traces"] = data / "repo-traces"
        collect(package, paths["repo_traces"],
                CollectConfig(limits=limits, first_items=config.repo_test_files, progress=False))
    elif config.repo_package:
        _log(f"no repository traces: {config.repo_package!r} is not an installed package")
    return paths


def _package_dir(name: str) -> Path | None:
    """The directory of an installed package, or None (not installed, or a single module)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations))) if locations else None


STAGES = ("pretrain", "midtrain", "sft")
# Pretraining is copy drills alone, at a constant learning rate: induction heads (copying from the context) form in
# ~225 steps of them (AdamW's rate x10, ``STAGE_SETTINGS``) and never on code and traces at a CPU's budget, nor on
# drills mixed in with them; a tenth of drills in the later stages keeps the heads (SFT without them lost them in 66
# steps). Both runs get the same drills.
# Midtraining gives traces three quarters of its tokens (frames exact 4.8% -> 6.2% over 0.55 with code beside them,
# direct answers 11% -> 12%); SFT keeps half its tokens on traces, at a third of the rates (``STAGE_SETTINGS``): 4.5%
# after it where the former SFT left 2.2% (``benchmarks/recipe_variants_{midtrain,sft}.json``, RESULTS.md).
MIXTURES = {  # by whether traces are trained on (False: the ablation, every trace replaced by code)
    True: {"pretrain": {"copy_drills": 1.0},
           "midtrain": {"copy_drills": 0.1, "traces": 0.75, "repo_traces": 0.05, "direct": 0.1},
           "sft": {"copy_drills": 0.1, "sft": 0.3, "traces": 0.5, "direct": 0.1}},
    False: {"pretrain": {"copy_drills": 1.0}, "midtrain": {"copy_drills": 0.1, "code": 0.8, "direct": 0.1},
            "sft": {"copy_drills": 0.1, "sft_nothink": 0.3, "code": 0.5, "direct": 0.1}},
}


def _stage_sources(config: SpeedrunConfig, stage: str, paths: dict[str, Path]) -> dict[str, float]:
    """Mixture weights per stage (shares of tokens), without the repository traces when there are none. The
    ablation has the same budget with every trace replaced by code: no trace documents, and SFT answers without
    the reasoning section."""
    weights = (config.mixtures or MIXTURES[config.traces])[stage]
    return {name: weight for name, weight in weights.items() if not _reads_repo_traces(name) or "repo_traces" in paths}


def reading_window(config: SpeedrunConfig) -> int | None:
    """The window a run's model reads traces in (its training length, when it trains on ``trace_windows``), or
    None (whole traces)."""
    from opencwm.data.documents import is_windowed

    mixtures = config.mixtures or MIXTURES[config.traces]
    return config.seq_len if any(map(is_windowed, (name for stage in mixtures.values() for name in stage))) else None


def new_model(config: SpeedrunConfig, tokenizer, **preset_overrides):
    """The untrained model of a run (seeded), on the run's device; ``preset_overrides`` change the preset's
    config (e.g. ``hidden_size``, ``num_hidden_layers``)."""
    from opencwm.model.factory import fresh_model

    return fresh_model(config.preset, tokenizer, seq_len=config.seq_len, seed=config.seed, device=config.device,
                       zero_residual=config.optimizer == "muon", **preset_overrides)


# per stage, over the common settings; ``lr_factor`` scales both learning rates (the run's ``lr`` and ``muon_lr``),
# ``adamw_lr_factor`` AdamW's alone beside Muon (embeddings, output head, norms),
# ``length_factor`` the sequence length at the run's tokens per step (``stage_shape``). Midtraining and SFT read
# sequences twice the drills' length, 2 x 1024 tokens a step: frames exact 5.5% -> 7.8% over 4 x 512 at equal tokens,
# frames ending past token 1024 of their trace 2.3% -> 4.5% (``benchmarks/recipe_variants_seq_len.json``, RESULTS.md).
# Every stage trains AdamW's parameters (embeddings, output head, norms) faster than the run's rate: the drills at
# ten times it, where the heads form at ~225 steps instead of ~600 (at 500 steps: 90% copying at x3, 7% at x1, 2%
# with both rates x2); 400 drill steps then 1120 of midtraining reach frames exact 26.8% where 939 and 581 reached
# 7.8%, at equal tokens. Midtraining at three times it: after those drills, 1120 steps reach 26.8% / 31.2% / 24.1%
# at AdamW x1 / x3 / x10 (the last in a make run), 581 steps 10.6% / 13.3% / 15.5%. SFT at ten times it (a third
# of that): chat answers 10% where x1 answered 0%, frames exact 15.0% and 16.1%
# (``benchmarks/recipe_variants_{drill_lr,fast_drills,fast_sft}.json``, RESULTS.md). Only beside Muon: with
# ``--optimizer adamw`` AdamW trains every matrix too, at the run's rate.
STAGE_SETTINGS = {"pretrain": {"schedule": "wsd", "decay_fraction": 0.0, "adamw_lr_factor": 10},
                  "midtrain": {"length_factor": 2, "adamw_lr_factor": 3},
                  "sft": {"lr_factor": 1 / 3, "length_factor": 2, "adamw_lr_factor": 10}}


def _stage_settings(config: SpeedrunConfig, stage: str) -> dict:
    return dict((config.stage_settings if config.stage_settings is not None else STAGE_SETTINGS).get(stage, {}))


def stage_shape(config: SpeedrunConfig, stage: str) -> tuple[int, int]:
    """(sequence length, sequences per step) of a stage: the run's ``seq_len`` times the stage's ``length_factor``
    (1 unless set), with as many sequences as keep the run's tokens per step (at least one; fewer tokens where the
    factor does not divide the run's batch)."""
    factor = _stage_settings(config, stage).get("length_factor", 1)
    return config.seq_len * factor, max(1, config.batch_size // factor)


def stage_train_config(config: SpeedrunConfig, steps: int, stage: str = "midtrain"):
    from opencwm.train.loop import TrainConfig

    settings = _stage_settings(config, stage)
    factor = settings.pop("lr_factor", 1.0)
    adamw_factor = settings.pop("adamw_lr_factor", 1.0) if config.optimizer == "muon" else 1.0  # AdamW alone: x1
    settings.pop("adamw_lr_factor", None)
    settings.pop("length_factor", None)
    return TrainConfig(**{**dict(steps=steps, batch_size=stage_shape(config, stage)[1],
                                 lr=config.lr * factor * adamw_factor,
                                 schedule=config.schedule, optimizer=config.optimizer,
                                 muon_lr=config.muon_lr * factor, min_lr_ratio=0.05,
                                 warmup_steps=min(30, steps // 5), checkpoint_every=max(50, steps // 4),
                                 log_every=25, seed=config.seed, compile=config.compile), **settings})


def training_documents(config: SpeedrunConfig, paths: dict[str, Path], tokenizer,
                       reuse: dict[str, list] | None = None) -> dict[str, list]:
    """The tokenized documents of every source a run trains on; sources already in ``reuse`` (another run's,
    the same text tokenized the same way) are taken from it."""
    from opencwm.data.documents import source_documents

    needed = {name for stage in STAGES for name in _stage_sources(config, stage, paths)}
    reuse = reuse or {}
    return {name: reuse[name] if name in reuse
            else source_documents(name, source_path(name, paths), tokenizer, window=config.seq_len)
            for name in sorted(needed)}


def _reads_repo_traces(name: str) -> bool:
    return name.startswith("repo_trace")  # repo_traces and its view repo_trace_windows


def source_path(name: str, paths: dict[str, Path]) -> Path:
    """The dataset a source of the mixtures reads: its own (code), the repository traces (repo_traces and its view
    repo_trace_windows), else the training traces (traces, and their views: trace_windows, direct, sft,
    sft_nothink, copy_drills: the ablation draws its drills from the traces' token ids too, no more of them;
    text_drills, which copies the traces' text: not for the ablation)."""
    if _reads_repo_traces(name):
        return paths["repo_traces"]
    return paths[name] if name == "code" else paths["traces"]


def train_model(config: SpeedrunConfig, root: Path, paths: dict[str, Path], tokenizer,
                docs: dict[str, list] | None = None, model=None,
                curve=None) -> tuple[Path, list[dict], dict[str, dict]]:
    """Train every stage of ``model`` (default: ``new_model``, the preset's); returns the last stage's directory,
    the logged metrics and the size of each source. With a ``curve`` (``eval.curve.LearningCurve``) a point is
    recorded at the end of pretraining and at every midtraining checkpoint."""
    from opencwm.data.packing import PackedStream
    from opencwm.model import CWM
    from opencwm.train.loop import Trainer, latest_checkpoint

    docs = docs if docs is not None else training_documents(config, paths, tokenizer)
    sizes = {name: {"documents": len(d), "tokens": sum(len(doc.tokens) for doc in d)} for name, d in docs.items()}
    model = model if model is not None else new_model(config, tokenizer)
    history: list[dict] = []
    steps_of = {"pretrain": config.pretrain_steps, "midtrain": config.midtrain_steps, "sft": config.sft_steps}
    last, tokens_before = None, 0
    for stage in STAGES:
        steps = steps_of[stage]
        if steps <= 0:
            continue
        last = stage
        seq_len, batch_size = stage_shape(config, stage)
        step_tokens = seq_len * batch_size

        def point(step: int, stage=stage, steps=steps, before=tokens_before, step_tokens=step_tokens) -> None:
            if curve is None or stage == "sft" or (stage == "pretrain" and step < steps):
                return
            weights = CWM.from_pretrained(latest_checkpoint(root / stage) / "model", device=config.device)
            curve.record(weights, stage=stage, step=step, tokens=before + step * step_tokens)

        weights = _stage_sources(config, stage, paths)
        stream = PackedStream({k: docs[k] for k in weights}, weights, seq_len=seq_len, seed=config.seed)
        trainer = Trainer(model, stream, stage_train_config(config, steps, stage), root / stage, tokenizer=tokenizer)
        trainer.resume()
        _log(f"{stage}: {steps} steps of {batch_size} x {seq_len} tokens on {weights}")
        trainer.train(progress=True, on_checkpoint=point)
        tokens_before += steps * step_tokens
        for line in (root / stage / "metrics.jsonl").read_text().splitlines():
            history.append({"stage": stage, **json.loads(line)})
    if last is None:
        raise ValueError("every stage has 0 steps")
    return root / last, history, sizes


def prepare(config: SpeedrunConfig) -> tuple[dict[str, Path], object]:
    """The data both runs share (corpora, traces) and the tokenizer, built once; returns their paths and the
    tokenizer."""
    from opencwm.data.documents import texts
    from opencwm.tokenizer import Tokenizer

    shared = Path(config.out) / "shared"
    paths = build_data(config, shared)
    _log("tokenizer")
    return paths, Tokenizer.train_or_load(
        shared / "tokenizer", lambda: texts(paths["code"], limit=400) + texts(paths["traces"], limit=1500),
        vocab_size=config.vocab)


MIN_SCALE = 0.1  # the plan's floor: below a tenth of the recipe's steps a run learns nothing worth reporting
# The drills' floor in a scaled plan: induction heads form at a number of drill steps, not a share of them (~225 at
# 4 x 512 and AdamW x10, ~600 at x1, where 545 steps on a slowed machine copied 9% and that run's frames were 0.9%
# exact): a slower machine gives up midtraining steps before it gives up the heads.
MIN_DRILL_STEPS = 400
EVAL_SHARE = 0.3  # at most this share of a run's time goes to evaluation; beyond it the evaluation is scaled down
MIN_EVAL = {"eval_traces": 20, "cruxeval_limit": 10}  # fewer items say nothing (figures move by 5+ points)


def _machine() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs"


def scaled_steps(recipe: dict[str, int], stage_seconds: dict[str, float], scale: float, *,
                 drill_floor: int = MIN_DRILL_STEPS) -> dict[str, int]:
    """The recipe's steps (``{stage}_steps``) for the training time of ``scale`` times the recipe's, each stage's
    step taking ``stage_seconds[stage]``: every stage scaled alike, except that pretraining (the copy drills) keeps
    ``drill_floor`` steps (all of its steps when the recipe has fewer) and the later stages share the time left,
    where that leaves each at least ``MIN_SCALE`` of its steps; otherwise every stage is scaled alike."""
    steps = {name: max(1, round(value * scale)) if value > 0 else 0 for name, value in recipe.items()}
    floor = min(recipe["pretrain_steps"], drill_floor)
    if steps["pretrain_steps"] >= floor:
        return steps
    later = [stage for stage in STAGES[1:] if recipe[f"{stage}_steps"] > 0]
    seconds = scale * sum(recipe[f"{stage}_steps"] * stage_seconds[stage] for stage in stage_seconds)
    later_seconds = sum(recipe[f"{stage}_steps"] * stage_seconds[stage] for stage in later)
    later_scale = (seconds - floor * stage_seconds["pretrain"]) / later_seconds if later_seconds else 1.0
    if later_scale < MIN_SCALE:
        return steps
    return {**steps, "pretrain_steps": floor,
            **{f"{stage}_steps": max(1, round(recipe[f"{stage}_steps"] * min(1.0, later_scale))) for stage in later}}


def plan_steps(config: SpeedrunConfig, paths: dict[str, Path], tokenizer, docs: dict[str, list], *,
               seconds_left: float, runs: int) -> dict:
    """Every stage's steps for this machine, and the evaluation's size: the recipe's, scaled down (never up) so
    that ``runs`` runs and their evaluations fit ``seconds_left``. The evaluation is part of the budget: when its
    estimate takes more than ``EVAL_SHARE`` of a run, its held-out traces and CruxEval items are cut (to
    ``MIN_EVAL`` at least). The steps never go below ``MIN_SCALE`` of the recipe: a plan that would is announced
    loudly before training (the run will overrun its budget) and marked ``below_floor``. Kept in ``plan.json``; a
    rerun with the same recipe resumes with it, and says when it was made on another machine."""
    from opencwm.data.packing import PackedStream
    from opencwm.train.budget import MEASURED_STEPS, fit_scale, measure_speed

    recipe = {f"{stage}_steps": getattr(config, f"{stage}_steps") for stage in STAGES}
    key = {"recipe": recipe, "time_budget": config.time_budget, "device": config.device, "runs": runs}
    plan_file = Path(config.out) / "plan.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if {k: plan.get(k) for k in key} == key:
            if plan.get("speed"):
                other = plan.get("machine") not in (None, _machine())
                _log(("WARNING: " if other else "") + f"resuming the plan in {plan_file}, made "
                     + (f"on another machine ({plan.get('machine')})" if other else "on this machine")
                     + f" at {plan['speed']['tokens_per_second']:.0f} training tokens/s (steps scaled by "
                     f"{plan['scale']}); delete that file to plan again for the speed measured now")
            return plan
    if not config.time_budget or not docs:  # no budget, or every run already finished
        return {**key, "steps": recipe, "scale": 1.0}
    _log("measuring this machine's training and decoding speed, to fit the time budget")
    stage_seconds, speeds = {}, {}
    for stage in (stage for stage in STAGES if recipe[f"{stage}_steps"] > 0):
        shape = stage_shape(config, stage)
        if shape not in speeds:  # one measurement per sequence length the stages train at
            weights = _stage_sources(config, stage, paths)
            stream = PackedStream({k: docs[k] for k in weights}, weights, seq_len=shape[0], seed=config.seed + 1)
            speeds[shape] = measure_speed(lambda: new_model(config, tokenizer), stage_train_config(config, 1, stage),
                                          stream, decode_batch=EVAL_BATCH)
            seconds_left -= speeds[shape].startup_seconds + speeds[shape].step_seconds * (1 + MEASURED_STEPS)
        stage_seconds[stage] = speeds[shape].step_seconds
    # every sequence length's start-up (compilation), the first measurement's decoding; a step's time averaged over
    # the recipe's steps
    speed = replace(next(iter(speeds.values())), startup_seconds=sum(s.startup_seconds for s in speeds.values()),
                    step_seconds=sum(recipe[f"{stage}_steps"] * seconds for stage, seconds in stage_seconds.items())
                    / sum(recipe.values()))
    evaluation = {"eval_traces": config.eval_traces, "cruxeval_limit": config.cruxeval_limit}
    eval_seconds = evaluation_seconds(config, paths, tokenizer, speed)
    allowed = EVAL_SHARE * seconds_left / runs
    if eval_seconds > allowed:
        cut = allowed / eval_seconds
        evaluation = {name: min(value, max(MIN_EVAL[name], round(value * cut))) for name, value in evaluation.items()}
        eval_seconds = evaluation_seconds(replace(config, **evaluation), paths, tokenizer, speed)
    scale = fit_scale(sum(recipe.values()), seconds_left=seconds_left, runs=runs, speed=speed,
                      eval_seconds=eval_seconds)
    below_floor = scale < MIN_SCALE
    steps = scaled_steps(recipe, stage_seconds, max(scale, MIN_SCALE))
    drill_floor = steps["pretrain_steps"] > round(recipe["pretrain_steps"] * max(scale, MIN_SCALE))
    fitted = sum(steps.values())
    train_seconds = sum(steps[f"{stage}_steps"] * seconds for stage, seconds in stage_seconds.items())
    expected = runs * (speed.startup_seconds + train_seconds + eval_seconds)
    plan = {**key, "steps": steps, "scale": round(max(scale, MIN_SCALE), 4), "fitted_scale": round(scale, 4),
            "below_floor": below_floor, "drill_floor": drill_floor, "evaluation": evaluation,
            "speed": speed.as_dict(),
            "stage_step_seconds": {stage: round(seconds, 4) for stage, seconds in stage_seconds.items()},
            "machine": _machine(),
            "eval_seconds_estimate": round(eval_seconds, 1), "seconds_left": round(seconds_left, 1),
            "expected_seconds": round(expected, 1)}
    plan_file.write_text(json.dumps(plan, indent=1))
    _log(f"{speed.tokens_per_second:.0f} training tokens/s here ({speed.step_seconds:.2f} s per step, start-up "
         f"{speed.startup_seconds:.0f} s), evaluation about {eval_seconds:.0f} s per run on "
         f"{evaluation['eval_traces']} held-out traces and {evaluation['cruxeval_limit']} CruxEval items: "
         + ("the whole recipe fits" if scale >= 1 else
            f"{fitted} of the recipe's {sum(recipe.values())} steps per run fit the {config.time_budget:.0f} s budget"
            + (f", the drills kept at {steps['pretrain_steps']} steps (MIN_DRILL_STEPS)" if drill_floor else "")))
    if below_floor:
        print("\n".join([
            "", "!" * 100,
            f"WARNING: at the speed measured now ({speed.tokens_per_second:.0f} training tokens/s; is other work "
            "running here?) the", f"{config.time_budget:.0f} s budget fits only {scale:.1%} of the recipe's steps, "
            f"below the floor of {MIN_SCALE:.0%}: a model trained that little learns nothing", "worth reporting. "
            f"Training {fitted} steps per run instead (the floor): the speedrun will take about "
            f"{expected / 60:.0f} min, past its budget.", "Run it on an idle machine, or give more time "
            "(--time-budget SECONDS, 0 for the whole recipe).", "!" * 100, ""]), file=sys.stderr, flush=True)
    return plan


def run_one(config: SpeedrunConfig, paths: dict[str, Path], tokenizer, docs: dict[str, list] | None = None) -> dict:
    from opencwm.model import CWM
    from opencwm.train.loop import latest_checkpoint

    start = time.monotonic()
    root = Path(config.out) / ("traces" if config.traces else "no_traces")
    results_file = root / "results.json"
    if results_file.exists():
        return json.loads(results_file.read_text())
    from opencwm.eval.curve import LearningCurve, read_curve
    from opencwm.trace.collect import read_traces

    window = reading_window(config)
    curve = LearningCurve(root / "curve.jsonl", tokenizer, read_traces(paths["heldout-traces"]), size=CURVE_TRACES,
                          batch_size=EVAL_BATCH, window=window)
    last_stage, history, sources = train_model(config, root, paths, tokenizer, docs, curve=curve)
    checkpoint = latest_checkpoint(last_stage)
    model = CWM.from_pretrained(checkpoint / "model", device=config.device)
    _log("evaluating")
    evaluation_start = time.monotonic()
    results = evaluate(config, model, tokenizer, paths, window)
    if config.rl_steps and config.traces:
        from opencwm.speedrun_rl import rl_stage

        _log(f"RL: {config.rl_steps} steps from the SFT checkpoint")
        results.update(rl_stage(config, root, paths, checkpoint / "model"))
    results.update(wall_seconds=round(time.monotonic() - start, 1),
                   eval_seconds=round(time.monotonic() - evaluation_start, 1), history=history, sources=sources,
                   difficulty=difficulty_profile(paths, config.eval_traces), config=asdict(config),
                   curve=read_curve(root / "curve.jsonl"), window=window,
                   stage_shapes={stage: stage_shape(config, stage) for stage in STAGES})
    results_file.write_text(json.dumps(results))
    return results




def speedrun(config: SpeedrunConfig, *, ablation: bool = True) -> dict:
    start = time.monotonic()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, tokenizer = prepare(config)
    configs = [config, replace(config, traces=False)] if ablation and config.traces else [config]
    unfinished = [c for c in configs if not (Path(c.out) / ("traces" if c.traces else "no_traces") /
                                             "results.json").exists()]
    _log("tokenizing the training documents")
    docs: dict[bool, dict[str, list]] = {}
    for c in unfinished:
        docs[c.traces] = training_documents(c, paths, tokenizer, reuse=docs.get(True))
    first = unfinished[0] if unfinished else config  # measured on the documents of a run still to train
    plan = plan_steps(first, paths, tokenizer, docs.get(first.traces, {}),
                      seconds_left=config.time_budget - (time.monotonic() - start), runs=len(configs))
    sized = {**plan["steps"], **plan.get("evaluation", {})}
    results = [run_one(replace(c, **sized), paths, tokenizer, docs.get(c.traces)) for c in configs]
    main, other = results[0], (results[1] if len(results) > 1 else None)
    report = write_report(out, main, other, time.monotonic() - start, plan)
    _log(f"report: {out / 'report.md'}")
    return report

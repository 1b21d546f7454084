"""Fitting training into a wall-time budget: measure this machine's training and decoding steps, then scale a
recipe's steps down to what fits.

Machines that look alike differ several fold: the 2-core machines here train the ``tiny`` preset at about 8k
tokens/s where the CPU has bf16 matrix units (AMX) and under 1k where it has only AVX2. A recipe fixed in steps
cannot promise a wall time on both; one measured at the start can. ``measure_speed`` times a few real optimizer
steps of the model as it will train (same config, compiled or not) and a few greedy decoding steps as evaluation
runs them; ``fit_scale`` is the arithmetic that turns the measurements into a factor on the recipe's steps.
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Optimizer steps timed after the first (which compiles): the first few after it run slower (2-core AMD EPYC, tiny
# preset at 4 x 512: the median of 4 steps said 1.48-1.57 s per step, of 12 steps 1.32 s, and training ran at
# 1.3-1.4 s), so a short measurement planned ~15% fewer steps than fit.
MEASURED_STEPS = 10


@dataclass
class Speed:
    step_seconds: float  # one optimizer step once compiled (median of the timed steps)
    startup_seconds: float  # up to the end of the first step: compilation and the first step itself
    decode_seconds: float  # one greedy decoding step of a batch, averaged over a growing context
    tokens_per_step: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


def measure_speed(new_model, train_config, stream, *, decode_batch: int = 8, steps: int = MEASURED_STEPS,
                  prompt_tokens: int = 256, decode_steps: int = 256) -> Speed:
    """Train a model from ``new_model()`` (a throwaway) for 1 + ``steps`` steps on ``stream`` (a copy of the
    training data, which it advances) with ``train_config`` (its step count and checkpointing overridden), then
    time greedy decoding of a batch with another, uncompiled like the one evaluation loads."""
    import torch

    from opencwm.model.generate import Sampling, generate
    from opencwm.train.loop import Trainer

    model = new_model().eval()
    vocab = model.config.vocab_size
    rng = random.Random(0)
    config = replace(train_config, steps=1 + steps, log_every=1, checkpoint_every=10**9, keep_checkpoints=1,
                     warmup_steps=1)
    with tempfile.TemporaryDirectory(prefix="opencwm-speed-") as tmp:
        start = time.monotonic()
        Trainer(new_model(), stream, config, Path(tmp)).train(progress=False)
        setup = time.monotonic() - start
        elapsed = [json.loads(line)["elapsed_s"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    per_step = sorted(b - a for a, b in itertools.pairwise(elapsed))
    step_seconds = per_step[len(per_step) // 2]
    startup = setup - step_seconds * steps  # construction of the optimizer, compilation, the first step

    prompts = [[rng.randrange(vocab) for _ in range(prompt_tokens)] for _ in range(decode_batch)]
    timings = []
    with torch.no_grad():
        for new_tokens in (4, 4, 4 + decode_steps):
            begin = time.monotonic()
            generate(model, prompts, Sampling(max_new_tokens=new_tokens))
            timings.append(time.monotonic() - begin)
    decode = max(1e-6, (timings[2] - timings[1]) / decode_steps)
    return Speed(step_seconds=step_seconds, startup_seconds=max(0.0, startup), decode_seconds=decode,
                 tokens_per_step=train_config.batch_size * train_config.grad_accum * stream.seq_len)


def fit_scale(total_steps: int, *, seconds_left: float, runs: int, speed: Speed, eval_seconds: float,
              margin: float = 0.08) -> float:
    """The factor (at most 1) on ``total_steps`` (all stages of one run) such that ``runs`` runs, each with its
    start-up, its training and its evaluation, take at most ``seconds_left`` less a ``margin`` share of it. The
    margin covers what the measurement does not see: each stage's start and checkpoints, and stages whose data
    trains slower than measured (2-core AMD EPYC, margin 0.1, when one step's time was measured for every stage:
    each run took 5% longer than planned, the speedrun 28.5 of its 30 minutes). ``eval_seconds`` is an upper
    bound, itself a margin (2-core Intel Xeon, 2026-12-08, each stage's step measured: training as estimated
    within 5%, evaluation 118 s of the 233 estimated, margin 0.15: the speedrun took 19.8 of its 30 minutes)."""
    if total_steps <= 0:
        return 1.0
    per_run = seconds_left * (1 - margin) / runs - speed.startup_seconds - eval_seconds
    return max(0.0, min(1.0, per_run / (total_steps * speed.step_seconds)))

"""RL environments and their mixture. An environment is a benchmark of the evaluation suite (its prompt, where a
completion ends, what answer it holds and the grader that decides it, in the sandbox) over training items: output
prediction of traced programs (``cruxeval-o``: the predicted value equals the real one, by execution), code
generation with tests (``humaneval``, ``livecodebench``), math answers (``math500``-style, math-verify). So a reward
is exactly the verdict the benchmark's evaluation would give the same completion.

    mixture = Mixture([environment("cruxeval-o", "runs/rl-items.jsonl", style="assert"), ...], weights=[1.0])
    env, problem = mixture.sample()

A mixture draws environments by weight and items at random, from a seeded generator whose state is part of the
run's checkpoint (a resumed run draws what the uninterrupted one would).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opencwm.errors import UsageError
from opencwm.eval.harness import Benchmark, Problem
from opencwm.eval.registry import PROTOCOLS, benchmark_named


@dataclass
class Environment:
    name: str
    benchmark: Benchmark
    problems: list[Problem]
    max_tokens: int  # the response limit (the benchmark's protocol unless given)


def environment(name: str, data: str, *, style: str | None = None, max_tokens: int | None = None) -> Environment:
    """The environment of benchmark ``name`` (one of ``PROTOCOLS``) over the items in ``data`` (the benchmark's own
    format); one-line errors for an unknown name or unusable data."""
    if name not in PROTOCOLS:
        raise UsageError(f"unknown RL environment {name!r} (choose from {', '.join(PROTOCOLS)})")
    benchmark = benchmark_named(name, style, data)
    problems = [p for p in benchmark.problems() if not p.unanswerable]
    if not problems:
        raise UsageError(f"{name}: no usable items in {data}")
    styles, defaults, by_style = PROTOCOLS[name]
    limit = max_tokens or by_style.get(style or styles[0], {}).get("max_tokens", defaults["max_tokens"])
    return Environment(f"{name}:{getattr(benchmark, 'style', styles[0])}", benchmark, problems, limit)


class Mixture:
    """Environments drawn by weight; items drawn uniformly within one."""

    def __init__(self, environments: list[Environment], weights: list[float] | None = None, seed: int = 0):
        if not environments:
            raise UsageError("an RL run needs at least one environment")
        self.environments = environments
        self.weights = weights or [1.0] * len(environments)
        if len(self.weights) != len(environments) or any(w < 0 for w in self.weights) or not sum(self.weights):
            raise UsageError("one non-negative weight per environment, not all zero")
        self.rng = random.Random(seed)

    def sample(self) -> tuple[Environment, Problem]:
        env = self.rng.choices(self.environments, weights=self.weights)[0]
        return env, self.rng.choice(env.problems)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def output_prediction_items(count: int, *, difficulty: int = 1, seed: int = 1234) -> list[dict]:
    """``count`` synthetic programs as output-prediction items in CruxEval's format (``id``, ``code``, ``input``,
    ``output``), each output the value the real call returned (traced in the sandbox); programs whose call raises
    or runs out of limits are left out."""
    from opencwm.data.synthetic import ProgramGenerator
    from opencwm.eval.trace_eval import returned
    from opencwm.trace.sandboxed import sandboxed_traces

    generator = ProgramGenerator(seed=seed, difficulty=difficulty)
    programs = [generator.program() for _ in range(count)]
    traces = sandboxed_traces([(p.source, p.call) for p in programs])
    items = []
    for number, (program, trace) in enumerate(zip(programs, traces)):
        value = returned(trace)
        if value is not None and program.call.startswith("f(") and program.call.endswith(")"):
            items.append({"id": f"rl_{seed}_{number}", "code": program.source, "input": program.call[2:-1],
                          "output": value})
    return items

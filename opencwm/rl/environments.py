"""RL environments and their mixture. An environment is a benchmark of the evaluation suite (its prompt, where a
completion ends, what answer it holds and the grader that decides it, in the sandbox) over training items: output
prediction of traced programs (``cruxeval-o``: the predicted value equals the real one, by execution), code
generation with tests (``humaneval``, ``livecodebench``), math answers (``math500``-style, math-verify). So a reward
is exactly the verdict the benchmark's evaluation would give the same completion. ``swe`` is multi-turn: agentic
episodes on forager tasks, rewarded by the task's tests (``AgentEnvironment``).

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


@dataclass
class AgentEnvironment:
    """Agentic episodes on forager tasks (``forage mutate`` or ``forage import``): the policy acts with CWM's tools
    in the task's sandboxed work tree for up to ``budget``'s turns, and the reward is the task's grade (its
    FAIL_TO_PASS and PASS_TO_PASS tests on a fresh tree with the submitted diff, as ``forage run`` grades)."""
    name: str
    tasks: list[dict]
    budget: object  # opencwm.forage.agent.EpisodeBudget
    max_tokens: int  # per assistant turn
    backend: str = "auto"

    @property
    def problems(self) -> list[dict]:
        return self.tasks


def agent_environment(data: str, *, max_tokens: int | None = None, max_turns: int = 8,
                      backend: str = "auto") -> AgentEnvironment:
    from opencwm.forage.agent import EpisodeBudget
    from opencwm.forage.environment import ForageError
    from opencwm.forage.tasks import read_tasks
    from opencwm.shards import DatasetError

    try:
        tasks = read_tasks(data)
    except (ForageError, DatasetError) as exc:
        raise UsageError(f"swe: {exc}") from None
    if not tasks:
        raise UsageError(f"swe: no validated tasks in {data}")
    budget = EpisodeBudget(max_turns=max_turns, command_timeout=60, max_seconds=600)
    return AgentEnvironment("swe", tasks, budget, max_tokens or 512, backend)


def environment(name: str, data: str, *, style: str | None = None, max_tokens: int | None = None,
                backend: str = "auto"):
    """The environment of benchmark ``name`` (one of ``PROTOCOLS``) over the items in ``data`` (the benchmark's own
    format), or with ``swe`` agentic episodes on the forager tasks in ``data``; one-line errors for an unknown
    name or unusable data. ``backend``: the sandbox of the agent's shell and its test runs (graders' sandboxes are
    the caller's)."""
    if name == "swe":
        return agent_environment(data, max_tokens=max_tokens, backend=backend)
    if name not in PROTOCOLS:
        raise UsageError(f"unknown RL environment {name!r} (choose from {', '.join([*PROTOCOLS, 'swe'])})")
    benchmark = benchmark_named(name, style, data)
    problems = [p for p in benchmark.problems() if not p.unanswerable]
    if not problems:
        raise UsageError(f"{name}: no usable items in {data}")
    styles, defaults, by_style = PROTOCOLS[name]
    limit = max_tokens or by_style.get(style or styles[0], {}).get("max_tokens", defaults["max_tokens"])
    return Environment(f"{name}:{getattr(benchmark, 'style', styles[0])}", benchmark, problems, limit)


class Mixture:
    """Environments drawn by weight; items drawn uniformly within one."""

    def __init__(self, environments: list, weights: list[float] | None = None, seed: int = 0):
        if not environments:
            raise UsageError("an RL run needs at least one environment")
        self.environments = environments
        self.weights = weights or [1.0] * len(environments)
        if len(self.weights) != len(environments) or any(w < 0 for w in self.weights) or not sum(self.weights):
            raise UsageError("one non-negative weight per environment, not all zero")
        self.rng = random.Random(seed)

    def sample(self) -> tuple:
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

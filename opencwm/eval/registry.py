"""The benchmarks by name: each one's published protocol (its styles, the first the default, and per style the
sampling defaults) and ``benchmark_named``, which makes one. The eval commands and RL's environments use both."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the command line reads the protocols without loading the harness)
    from opencwm.eval.harness import Benchmark

PROTOCOLS = {
    "cruxeval-o": (("direct", "assert", "think", "rollout"),
                   {"samples": 10, "temperature": 0.2, "top_p": 0.95, "max_tokens": 128},
                   {"think": {"max_tokens": 8192}, "rollout": {"max_tokens": 1024}}),
    "cruxeval-i": (("direct", "think"), {"samples": 10, "temperature": 0.2, "top_p": 0.95, "max_tokens": 128},
                   {"think": {"max_tokens": 8192}}),
    "humaneval": (("complete", "think"), {"samples": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 512},
                  {"think": {"max_tokens": 8192}}),
    **{name: (("think",), {"samples": 4, "temperature": 1.0, "top_p": 0.95, "max_tokens": 32768}, {})
       for name in ("livecodebench", "math500", "aime24", "aime25")},
}


def benchmark_named(name: str, style: str | None = None, data: str | None = None, *, prompt_file: str | None = None,
                    since: str | None = None, until: str | None = None, test_timeout: float = 6.0,
                    public_only: bool = False) -> Benchmark:
    """The benchmark ``name`` (one of ``PROTOCOLS``) in ``style`` (default: its protocol's) over ``data``."""
    from opencwm.eval.cruxeval import CruxEval
    from opencwm.eval.humaneval import HumanEval
    from opencwm.eval.livecodebench import LiveCodeBench
    from opencwm.eval.mathematics import MathBenchmark

    style = style or PROTOCOLS[name][0][0]
    if name.startswith("cruxeval"):
        return CruxEval("output" if name == "cruxeval-o" else "input", style, data, prompt_file)
    if name == "humaneval":
        return HumanEval(style, data)
    if name == "livecodebench":
        return LiveCodeBench(data, since, until, test_timeout, public_only)
    return MathBenchmark(name, data)

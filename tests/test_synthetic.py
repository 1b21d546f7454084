"""The synthetic program generator: valid, deterministic, terminating programs whose difficulty knob works."""

from __future__ import annotations

import statistics

import pytest

from opencwm.data.synthetic import ProgramGenerator
from opencwm.trace.program import trace_program
from opencwm.trace.tracer import Limits


def test_same_seed_same_programs():
    a, b = ProgramGenerator(seed=5, difficulty=2), ProgramGenerator(seed=5, difficulty=2)
    assert [a.program() for _ in range(20)] == [b.program() for _ in range(20)]
    assert ProgramGenerator(seed=6).program() != ProgramGenerator(seed=5).program()


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_programs_run_and_traces_return_what_python_returns(difficulty):
    generator = ProgramGenerator(seed=difficulty, difficulty=difficulty)
    for _ in range(60):
        program = generator.program()
        compile(program.source, "<synthetic>", "exec")
        namespace: dict = {}
        exec(program.source, namespace)
        try:
            real, raised = repr(eval(program.call, namespace)), None
        except AssertionError as exc:  # the only exception allowed to escape: the deliberate one
            real, raised = None, exc
        if raised is not None:
            assert program.features.get("uncaught")  # only programs built to let it escape do
        trace = trace_program(program.source, program.call, limits=Limits(max_frames=100_000))
        if raised is None:
            assert trace.status == "ok" and trace.return_value == real
        else:
            assert trace.status == "exception" and "AssertionError" in trace.frames[-1].value


def test_difficulty_knob_lengthens_traces_and_covers_the_constructs():
    medians, seen = [], set()
    for difficulty in (1, 2, 3):
        generator = ProgramGenerator(seed=0, difficulty=difficulty)
        lengths = []
        for _ in range(80):
            program = generator.program()
            seen.update(k for k in program.features if k != "statements")
            lengths.append(len(trace_program(program.source, program.call, limits=Limits(max_frames=5000)).frames))
        medians.append(statistics.median(lengths))
    assert medians[0] < medians[1] < medians[2]
    assert medians[0] >= 7  # as long as CruxEval's median trace already at the easiest level
    assert {"loops", "branches", "helper_calls", "exceptions", "uncaught"} <= seen


def test_difficulty_is_checked():
    with pytest.raises(ValueError):
        ProgramGenerator(difficulty=0)

"""The CWM trace codec: exact round trips (hypothesis) and '..' resolution against real program states."""

from __future__ import annotations

import json
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencwm.special_tokens import CWM_IDS
from opencwm.trace.codec import TraceDecodeError, decode, encode, resolve_locals
from opencwm.trace.program import trace_program
from opencwm.trace.record import CALL, EXCEPTION, LINE, OK, RAISED, RETURN, TRUNCATED, Frame, Trace

SPECIALS = tuple(CWM_IDS)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(
    lambda s: not any(tok in s for tok in SPECIALS) and "\n" not in s and not s.endswith("  # << START_OF_TRACE")
)
value = st.one_of(text, st.just(".."))


@st.composite
def traces(draw):
    lines = draw(st.lists(text, min_size=1, max_size=8))
    source = "\n".join(lines)
    entry = draw(st.integers(1, len(lines)))
    frames, depth = [], 0
    for _ in range(draw(st.integers(0, 12))):
        choices = [CALL] + ([LINE, RETURN, EXCEPTION] if depth else [])
        event = draw(st.sampled_from(choices))
        line = draw(st.sampled_from(lines))
        if event in (CALL, LINE):
            locals_ = draw(st.dictionaries(text, value if event == LINE else text, max_size=4))
            frames.append(Frame(event, line, locals=locals_))
        else:
            frames.append(Frame(event, line, value=draw(text)))
        depth += {CALL: 1, RETURN: -1, EXCEPTION: -1}.get(event, 0)
    status = draw(st.sampled_from([OK, RAISED, TRUNCATED]))
    if status != TRUNCATED:
        status = RAISED if frames and frames[-1].event == EXCEPTION else OK
    return Trace(source, entry, frames, status)


def _fields(trace: Trace):
    return (trace.source, trace.entry_lineno, trace.status,
            [(f.event, f.line, f.locals, f.value) for f in trace.frames])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_codec_round_trips_exactly(trace):
    text_form = encode(trace)
    decoded = decode(text_form)
    assert _fields(decoded) == _fields(trace)
    assert encode(decoded) == text_form
    # Every line number recovered from the text names a source line with that exact text.
    lines = trace.source.split("\n")
    assert all(lines[f.lineno - 1] == f.line for f in decoded.frames)


# Generated programs: straight-line code and loops over ints, strings, lists and dicts, traced for real.
atom = st.one_of(st.integers(-50, 50), st.text("abc", max_size=3), st.lists(st.integers(0, 9), max_size=3),
                 st.dictionaries(st.sampled_from("xyz"), st.integers(0, 5), max_size=2))
NAMES = ["a", "b", "c", "d"]


@st.composite
def programs(draw):
    body = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["assign", "copy", "loop", "mutate"]))
        if kind == "assign":
            body.append(f"    {name} = {draw(atom)!r}")
        elif kind == "copy":
            body.append(f"    {name} = {draw(st.sampled_from(['p', 'q']))}")
        elif kind == "loop":
            body.append(f"    for {name} in range({draw(st.integers(0, 3))}):")
            body.append(f"        q = q + [{name}]")
        else:
            body.append("    q.append(len(q))")
    return "def f(p, q):\n" + "\n".join(body) + "\n    return q\n", f"f({draw(atom)!r}, [])"


def _concrete_states(source: str, call: str) -> list[dict]:
    """The real locals at every line event of f, by a plain settrace recorder."""
    namespace: dict = {}
    exec(compile(source, "<gen>", "exec"), namespace)
    states = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name != "f":
            return None
        if event == "line":
            states.append({k: repr(v) for k, v in frame.f_locals.items()})
        return tracer

    sys.settrace(tracer)
    try:
        eval(call, namespace)
    finally:
        sys.settrace(None)
    return states


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_dots_resolve_to_every_concrete_value(program):
    source, call = program
    trace = trace_program(source, call)
    assert trace.status == OK
    decoded = decode(encode(trace))
    resolved = [r for f, r in zip(decoded.frames, resolve_locals(decoded.frames)) if f.event == LINE]
    assert resolved == _concrete_states(source, call)
    assert all(".." not in state.values() for state in resolved)


def test_text_layout_matches_cwm():
    trace = trace_program("def f(x):\n    y = x + 1\n    return y\n", "f(1)")
    expected = (
        '<|begin_of_text|><|trace_context_start|>def f(x):  # << START_OF_TRACE\n    y = x + 1\n    return y\n'
        '<|frame_sep|><|call_sep|>{"x": "1"}<|action_sep|>def f(x):\n<|frame_sep|>'
        '<|line_sep|>{"x": ".."}<|action_sep|>    y = x + 1\n<|frame_sep|>'
        '<|line_sep|>{"x": "..", "y": "2"}<|action_sep|>    return y\n<|frame_sep|>'
        '<|return_sep|><|action_sep|>    return y\n<|arg_sep|>"2"<|frame_sep|><|end_of_text|>'
    )
    assert encode(trace) == expected
    assert json.loads('"2"') == "2"


def test_malformed_text_is_rejected_with_a_reason():
    good = encode(trace_program("def f():\n    return 1\n", "f()"))
    for bad, reason in [
        ("hello", "must start with"),
        (good.replace("<|action_sep|>", "", 1), "no <|action_sep|>"),
        (good.replace('{}', '{"x": ', 1), "invalid JSON"),
        (good.replace("<|call_sep|>", "<|pad|>", 1), "step-kind"),
        (good.replace("<|frame_sep|><|end_of_text|>", "<|end_of_text|>"), "frame separator"),
    ]:
        try:
            decode(bad)
        except TraceDecodeError as exc:
            assert reason in str(exc), (reason, str(exc))
        else:
            raise AssertionError(f"accepted malformed text ({reason})")

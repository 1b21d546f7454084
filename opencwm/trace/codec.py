"""The one codec between a ``Trace`` and CWM's trace text (SPEC §2), and resolution of ``".."`` values.

Text layout (no separators besides the special tokens; each action line ends with a newline; locals and values are
``json.dumps`` output, as in CWM's released debugger)::

    <|begin_of_text|><|trace_context_start|>SOURCE<|frame_sep|>
    <|call_sep|>{"x": "1"}<|action_sep|>def f(x):\\n<|frame_sep|>
    <|line_sep|>{"x": ".."}<|action_sep|>    y = x + 1\\n<|frame_sep|>
    <|return_sep|><|action_sep|>    return y\\n<|arg_sep|>"2"<|frame_sep|>
    <|end_of_text|>

(shown on several lines here; the real text has no newline after ``<|frame_sep|>``). SOURCE carries
``  # << START_OF_TRACE`` on the entry function's def line. A truncated trace has no ``<|end_of_text|>``.
The text form assumes that the source and values do not contain special-token strings; at the token level that
is guaranteed by the tokenizer, which never produces special tokens from text.
"""

from __future__ import annotations

import json

from opencwm.special_tokens import (
    ACTION_SEP,
    ARG_SEP,
    BEGIN_OF_TEXT,
    CALL_SEP,
    END_OF_TEXT,
    EXCEPTION_SEP,
    FRAME_SEP,
    LINE_SEP,
    RETURN_SEP,
    TRACE_CONTEXT_START,
)
from opencwm.trace.record import CALL, EXCEPTION, LINE, OK, RAISED, RETURN, TRUNCATED, UNCHANGED, Frame, Trace
from opencwm.trace.source_map import mark_entry, unmark_entry

EVENT_SEP = {CALL: CALL_SEP, LINE: LINE_SEP, RETURN: RETURN_SEP, EXCEPTION: EXCEPTION_SEP}
SEP_EVENT = {sep: event for event, sep in EVENT_SEP.items()}


class TraceDecodeError(ValueError):
    """The text is not in CWM's trace format."""


def encode_frame(frame: Frame) -> str:
    """One frame's text, without the closing ``<|frame_sep|>``."""
    if frame.event in (CALL, LINE):
        return f"{EVENT_SEP[frame.event]}{json.dumps(frame.locals)}{ACTION_SEP}{frame.line}\n"
    return f"{EVENT_SEP[frame.event]}{ACTION_SEP}{frame.line}\n{ARG_SEP}{json.dumps(frame.value)}"


def encode_context(source: str, entry_lineno: int) -> str:
    """The prompt that precedes the first frame (also the neural debugger's starting prompt)."""
    return f"{BEGIN_OF_TEXT}{TRACE_CONTEXT_START}{mark_entry(source, entry_lineno)}{FRAME_SEP}"


def encode(trace: Trace) -> str:
    parts = [encode_context(trace.source, trace.entry_lineno)]
    for frame in trace.frames:
        parts.append(encode_frame(frame))
        parts.append(FRAME_SEP)
    if not trace.truncated:
        parts.append(END_OF_TEXT)
    return "".join(parts)


def decode_frame(text: str) -> Frame:
    """Parse one frame's text (as produced by ``encode_frame``)."""
    sep = next((s for s in SEP_EVENT if text.startswith(s)), None)
    if sep is None:
        raise TraceDecodeError(f"frame does not start with a step-kind token: {text[:60]!r}")
    event = SEP_EVENT[sep]
    body = text[len(sep) :]
    head, found, rest = body.partition(ACTION_SEP)
    if not found:
        raise TraceDecodeError(f"frame has no {ACTION_SEP}: {text[:60]!r}")
    try:
        if event in (CALL, LINE):
            locals_ = json.loads(head)
            if not isinstance(locals_, dict):
                raise TraceDecodeError(f"locals are not a JSON object: {head[:60]!r}")
            return Frame(event, _strip_newline(rest), locals=locals_)
        if head:
            raise TraceDecodeError(f"{event} frame carries locals: {head[:60]!r}")
        line, found, value = rest.partition(ARG_SEP)
        if not found:
            raise TraceDecodeError(f"{event} frame has no {ARG_SEP}: {text[:60]!r}")
        return Frame(event, _strip_newline(line), value=json.loads(value))
    except json.JSONDecodeError as exc:
        raise TraceDecodeError(f"invalid JSON in {event} frame: {exc}") from None


def decode(text: str) -> Trace:
    """Parse CWM trace text. Line numbers are recovered by matching action lines against the source (the
    nearest match at or after the previous step of the same scope when a line occurs twice)."""
    prefix = BEGIN_OF_TEXT + TRACE_CONTEXT_START
    if not text.startswith(prefix):
        raise TraceDecodeError(f"trace text must start with {prefix}")
    body = text[len(prefix) :]
    finished = body.endswith(END_OF_TEXT)
    if finished:
        body = body[: -len(END_OF_TEXT)]
    context, found, rest = body.partition(FRAME_SEP)
    if not found:
        raise TraceDecodeError("trace text has no frame separator after the source")
    source, entry_lineno = unmark_entry(context)
    pieces = rest.split(FRAME_SEP)
    if pieces[-1] != "":
        raise TraceDecodeError("trace text does not end with a frame separator")
    pieces.pop()
    frames = [decode_frame(piece) for piece in pieces]
    assign_line_numbers(source, frames)
    status = TRUNCATED
    if finished:
        status = RAISED if frames and frames[-1].event == EXCEPTION else OK
    return Trace(source=source, entry_lineno=entry_lineno, frames=frames, status=status)


def _strip_newline(line: str) -> str:
    return line[:-1] if line.endswith("\n") else line


def assign_line_numbers(source: str, frames: list[Frame]) -> None:
    """Set each frame's ``lineno`` from its source line: the nearest match at or after the previous step of the
    same scope (None when the line is not in the source)."""
    positions: dict[str, list[int]] = {}
    for number, line in enumerate(source.split("\n"), start=1):
        positions.setdefault(line, []).append(number)
    stack: list[int] = []  # last line number of each open scope
    for frame in frames:
        candidates = positions.get(frame.line, [])
        last = stack[-1] if stack and frame.event != CALL else 0
        frame.lineno = next((n for n in candidates if n >= last), candidates[0] if candidates else None)
        if frame.event == CALL:
            stack.append(frame.lineno or 0)
        elif frame.event in (RETURN, EXCEPTION):
            if stack:
                stack.pop()
        elif stack:
            stack[-1] = frame.lineno or stack[-1]


def resolve_locals(frames: list[Frame]) -> list[dict[str, str] | None]:
    """The concrete locals of every frame: ``".."`` replaced by the last concrete value in the same scope.

    Scopes follow the text: a call frame opens one, a return or exception frame closes it. Return and exception
    frames get None (they carry no locals). A ``".."`` with no earlier value in its scope (only in a malformed or
    partly predicted trace) is kept as is.
    """
    resolved: list[dict[str, str] | None] = []
    stack: list[dict[str, str]] = []
    for frame in frames:
        if frame.event == CALL:
            state = {k: v for k, v in (frame.locals or {}).items()}
            stack.append(state)
            resolved.append(dict(state))
        elif frame.event == LINE:
            state = stack[-1] if stack else {}
            if not stack:
                stack.append(state)
            current = {}
            for name, value in (frame.locals or {}).items():
                current[name] = state.get(name, value) if value == UNCHANGED else value
            state.clear()
            state.update(current)
            resolved.append(dict(current))
        else:
            if stack:
                stack.pop()
            resolved.append(None)
    return resolved


__all__ = [
    "TraceDecodeError",
    "assign_line_numbers",
    "decode",
    "decode_frame",
    "encode",
    "encode_context",
    "encode_frame",
    "resolve_locals",
]

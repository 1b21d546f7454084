"""Predicted frames against the real tracer's: row by row, with the first divergence.

The debugger's steps line up with the real trace frame by frame, except where ``next`` or ``out`` skipped a call's
body (the model predicted the return right after the call): the real frames of that body are passed over, so the
predicted return is compared with the call's real return. A frame differs by the first of its event, its line,
its locals (as written, ``".."`` included) or its returned value that differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from opencwm.infer.debugger import Step
from opencwm.trace.calls import CLOSES, closing_index
from opencwm.trace.record import CALL, RETURN, Frame, Trace
from opencwm.trace.values import same_value

SAME = "same"


@dataclass
class Row:
    index: int  # the step's index in the session (or, for real frames never predicted, -1)
    predicted: Step | None
    real: Frame | None
    verdict: str  # "same", "event", "line", "locals", "value", "malformed", "extra" (no real frame), "missing"
    real_index: int | None = None  # the real frame's index in the real trace

    @property
    def same(self) -> bool:
        return self.verdict == SAME


def frame_difference(predicted: Frame, real: Frame) -> str:
    """The first field in which two frames differ, or ``"same"``."""
    if predicted.event != real.event:
        return "event"
    if predicted.line != real.line or (predicted.lineno is not None and predicted.lineno != real.lineno):
        return "line"
    if (predicted.locals or {}) != (real.locals or {}) or list(predicted.locals or {}) != list(real.locals or {}):
        return "locals"
    if predicted.value != real.value:
        return "value"
    return SAME


def align(steps: list[Step], real: list[Frame], *, finished: bool = False) -> list[Row]:
    """Rows of (step, real frame, verdict). With ``finished`` (the model ended the trace), real frames left over
    are rows of their own (``missing``)."""
    rows, r = [], 0
    for i, step in enumerate(steps):
        if r >= len(real):
            rows.append(Row(i, step, None, "extra"))
            continue
        verdict = "malformed" if step.frame is None else frame_difference(step.frame, real[r])
        rows.append(Row(i, step, real[r], verdict, r))
        r = closing_index(real, r) if step.skipped and real[r].event == CALL else r + 1
    if finished:
        rows += [Row(-1, None, frame, "missing", r + k) for k, frame in enumerate(real[r:])]
    return rows


def first_divergence(rows: list[Row]) -> Row | None:
    return next((row for row in rows if not row.same), None)


def predicted_return(steps: list[Step]) -> str | None:
    """The entry function's return value in the predicted steps (the return frame that closes depth 1)."""
    depth = 0
    for step in steps:
        if step.event == CALL:
            depth += 1
        elif step.event in CLOSES:
            if depth == 1 and step.event == RETURN:
                return step.frame.value
            depth -= 1
    return None


def summary(rows: list[Row], steps: list[Step], truth: Trace, *, finished: bool) -> dict:
    """What ``opencwm debug --predict`` reports: frames predicted and exact, the first divergence, whether the
    predicted trace ended where the real one did and returned the real value."""
    first = first_divergence(rows)
    predicted = [row for row in rows if row.predicted is not None]
    value = predicted_return(steps)
    return {
        "frames_predicted": len(predicted),
        "frames_real": len(truth.frames),
        "frames_exact": sum(row.same for row in predicted),
        "trace_exact": first is None and finished and len(predicted) == len(truth.frames),
        "first_divergence": None if first is None else {
            "step": first.index, "field": first.verdict,
            "predicted": first.predicted.text if first.predicted else None,
            "real": None if first.real is None else first.real.to_dict()},
        "predicted_return": value,
        "real_return": truth.return_value,
        "return_right": truth.return_value is not None and same_value(value, truth.return_value),
    }

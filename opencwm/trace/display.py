"""Human-readable rendering of a trace: one row per frame, with the locals that changed."""

from __future__ import annotations

from opencwm.trace.record import CALL, RETURN, UNCHANGED, Trace

_ARROW = {RETURN: "->", "exception": "!!"}


def format_trace(trace: Trace, *, width: int = 60) -> str:
    rows = [f"status: {trace.status}   frames: {len(trace.frames)}" + (f"   ({trace.error})" if trace.error else "")]
    depth = 0
    for frame in trace.frames:
        if frame.event != CALL:
            depth = max(depth, 1)
        indent = "  " * (depth - 1 if frame.event != CALL else depth)
        code = (indent + frame.line.strip())[:width]
        if frame.locals is not None:
            changed = ", ".join(f"{k}={v}" for k, v in frame.locals.items() if v != UNCHANGED)
            detail = changed
        else:
            detail = f"{_ARROW[frame.event]} {frame.value}"
        lineno = f"{frame.lineno:>4}" if frame.lineno else "   ?"
        rows.append(f"{frame.event:<9} {lineno}  {code:<{width}}  {detail}".rstrip())
        if frame.event == CALL:
            depth += 1
        elif frame.event in (RETURN, "exception"):
            depth -= 1
    return "\n".join(rows)

"""Calls in a list of frames: where each call closes, and the frames with the bodies of nested calls left out.

The neural debugger's ``next`` has the model predict a call's return right after the call frame, without the body
(CWM's ``demos/cwmdbg.py`` does the same); ``without_call_bodies`` is a real trace in that shape, as training data
(the ``skipped_calls`` view of a trace dataset) and as what such a session is compared with.
"""

from __future__ import annotations

from opencwm.trace.record import CALL, EXCEPTION, RETURN, Frame

CLOSES = (RETURN, EXCEPTION)


def closing_index(frames: list[Frame], call: int) -> int:
    """The index of the return or exception frame that closes the call frame at ``call`` (the last frame when the
    frames stop before it closes)."""
    depth = 0
    for i in range(call, len(frames)):
        if frames[i].event == CALL:
            depth += 1
        elif frames[i].event in CLOSES:
            depth -= 1
            if depth == 0:
                return i
    return len(frames) - 1


def without_call_bodies(frames: list[Frame]) -> list[Frame]:
    """The frames with every call below the first (the entry call) reduced to its call and closing frames."""
    out, i = [], 0
    while i < len(frames):
        out.append(frames[i])
        if frames[i].event == CALL and i > 0:
            end = closing_index(frames, i)
            if end > i:
                out.append(frames[end])
            i = end + 1
        else:
            i += 1
    return out

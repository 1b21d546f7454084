"""Host code's way to trace programs it did not write: each (source, call) traced by the real tracer inside the
sandbox, one sandbox for the batch. A program that cannot start, loops, or is killed gives a trace with that
status and no frames; the others are unaffected.
"""

from __future__ import annotations

from dataclasses import asdict

from opencwm.sandbox import Sandbox, SandboxConfig
from opencwm.trace.builder import Limits
from opencwm.trace.jobs import PRELOAD
from opencwm.trace.record import ERROR, Trace


def sandboxed_traces(programs: list[tuple[str, str]], *, limits: Limits | None = None,
                     config: SandboxConfig | None = None) -> list[Trace]:
    """The real trace of each ``(source, call)``; a sandbox outcome other than a result (timeout, memory, crash)
    becomes the status of a trace without frames, its error the outcome's."""
    limits = limits or Limits(max_frames=2000, max_bytes=200_000)
    out: list[Trace] = []
    with Sandbox(config or SandboxConfig(timeout=10, preload=PRELOAD)) as box:
        for source, call in programs:
            outcome = box.run("opencwm.trace.jobs:trace_program_job", source=source, call=call,
                              limits=asdict(limits))
            if outcome.ok:
                out.append(Trace.from_dict(outcome.result["trace"]))
            else:
                out.append(Trace(source=source, entry_lineno=0, status=outcome.status or ERROR, error=outcome.error))
    return out

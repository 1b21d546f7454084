"""The typed form of an execution trace: what the tracer produces, the codec encodes and the shards store.

A trace is a sequence of frames, each one step of execution in CWM's sense (SPEC §2):

- ``call``: a function of the traced source is entered (or a suspended generator resumed); ``locals`` holds every
  local at that moment (the arguments), ``line`` the callee's ``def`` line.
- ``line``: a statement is about to run; ``locals`` holds the locals after the previous statement ran, with ``".."``
  for a value unchanged since the previous frame of the same scope.
- ``return``: the scope is left normally (or a generator yields); ``value`` is the rendered value.
- ``exception``: the scope is left by an exception; ``value`` is the rendered exception.

Every ``call`` frame is closed by exactly one ``return`` or ``exception`` frame of the same scope, so the scope of
any frame is known from the text alone (see ``codec.resolve_locals``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CALL, LINE, RETURN, EXCEPTION = "call", "line", "return", "exception"
EVENTS = (CALL, LINE, RETURN, EXCEPTION)

UNCHANGED = ".."

# Outcome of tracing one item. The sandbox adds its own outcomes (timeout, memory, crash, killed) for items whose
# process never reported back.
OK = "ok"  # the entry function returned
RAISED = "exception"  # the entry function raised; the trace ends with its exception frame
TRUNCATED = "truncated"  # a per-trace limit was hit; frames so far are kept, the text has no end-of-text token
ERROR = "error"  # the item could not be set up: syntax error, missing function, bad call expression
# Every status a dataset row can have: the tracer's and the sandbox's (opencwm.sandbox.server.STATUSES).
STATUSES = (OK, RAISED, TRUNCATED, "timeout", "memory", "disk", "crash", "killed", ERROR)


@dataclass(slots=True)
class Frame:
    event: str
    line: str  # the source line of the action, without its newline
    lineno: int | None = None  # 1-based line in the trace's source (None when a decoded line matches no line)
    locals: dict[str, str] | None = None  # call and line frames (read-only: frames of a trace may share one)
    value: str | None = None  # return and exception frames

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Trace:
    source: str
    entry_lineno: int  # the line of the entry function's ``def``; it carries the START_OF_TRACE marker in the text
    frames: list[Frame] = field(default_factory=list)
    status: str = OK
    error: str | None = None  # one line explaining ERROR, TRUNCATED or a sandbox outcome

    @property
    def truncated(self) -> bool:
        return self.status == TRUNCATED

    @property
    def return_value(self) -> str | None:
        """The rendered value the entry function returned, or None if it did not return."""
        if self.status == OK and self.frames and self.frames[-1].event == RETURN:
            return self.frames[-1].value
        return None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "error": self.error,
            "entry_lineno": self.entry_lineno,
            "source": self.source,
            "frames": [f.to_dict() for f in self.frames],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        return cls(
            source=d["source"],
            entry_lineno=d["entry_lineno"],
            frames=[Frame(**f) for f in d["frames"]],
            status=d.get("status", OK),
            error=d.get("error"),
        )

"""The real frames beside the predicted ones: the session's call traced by the real tracer in the sandbox.

The entry call is the one given (``--call``) or, when the model wrote or the user edited the call frame, the
function called with that frame's locals as keyword arguments (traced in the sandbox like any program: a value
that is not valid Python makes the truth undefined, with the sandbox's reason). An edit of a later frame is a
state the real program cannot be resumed from, so the truth covers the steps before it only.
"""

from __future__ import annotations

from dataclasses import dataclass

from opencwm.infer.debugger import NeuralDebugger
from opencwm.trace.record import Trace


@dataclass
class Truth:
    trace: Trace | None  # None: undefined (``reason`` says why)
    call: str | None
    upto: int  # compare the session's steps before this index only
    reason: str | None = None


class TruthSource:
    """Real traces of one program, one sandbox run per distinct call (cached for the session). ``given_call``:
    the session's entry call when the user gave it (``--call 'f(3)'``), None when the model samples it."""

    def __init__(self, source: str, function: str, given_call: str | None = None, sandbox_config=None):
        self.source, self.function, self.given_call = source, function, given_call
        self.sandbox_config = sandbox_config
        self._traces: dict[str, Trace] = {}

    def trace(self, call: str) -> Trace:
        if call not in self._traces:
            from opencwm.trace.sandboxed import sandboxed_traces

            (self._traces[call],) = sandboxed_traces([(self.source, call)], config=self.sandbox_config)
        return self._traces[call]

    def for_session(self, debugger: NeuralDebugger) -> Truth:
        steps = debugger.steps
        upto = next((i for i, step in enumerate(steps) if i > 0 and step.origin == "set"), len(steps))
        note = (f"frame {upto} was edited: the real program cannot resume from an edited state, so the truth "
                "covers the frames before it") if upto < len(steps) else None
        first = steps[0]
        if first.origin == "given" and self.given_call:
            call = self.given_call
        elif first.frame is None or first.frame.locals is None:
            return Truth(None, None, 0, "the entry call frame is malformed")
        else:
            arguments = ", ".join(f"{name}={value}" for name, value in first.frame.locals.items())
            call = f"{self.function}({arguments})"
        trace = self.trace(call)
        if not trace.frames:
            return Truth(None, call, 0, f"{call}: {trace.error or trace.status}")
        return Truth(trace, call, upto, note)

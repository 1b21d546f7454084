"""The neural debugger in a terminal: pdb-style commands over a ``NeuralDebugger``, with readline history.

Each move prints the frame it reached: its number, event, line number and source line, then the locals it wrote
(``print`` resolves ``".."``). ``truth`` prints predicted and real frames side by side, ``!!`` marking the first
divergence; a malformed model frame prints as ``??`` with the reason.
"""

from __future__ import annotations

import cmd
import json
import sys

from opencwm.errors import terminal_text
from opencwm.infer.compare import Row, align, first_divergence
from opencwm.infer.completer import CompleterUnavailable
from opencwm.infer.debugger import DebuggerError, NeuralDebugger, Step
from opencwm.infer.truth import TruthSource
from opencwm.trace.record import CALL, LINE

HELP = """commands (abbreviations in brackets):
  s[tep]            the next frame, into calls          n[ext]        the next frame, over calls
  o[ut]             until the function returns          b[ack]        forget the last frame
  c[ontinue]        until a breakpoint or the end       break [LINE]  set a breakpoint (none: list them)
  clear LINE        remove a breakpoint                 p[rint] [NAME] locals ('..' resolved)
  set NAME = VALUE  edit a local, predict on from it    reset         start again (arguments resampled)
  l[ist]            the source, -> at the current line  w[here]       the open calls
  truth             real frames beside predicted ones   h[elp]        this text
  q[uit]"""


def format_step(index: int, step: Step, *, truncate: int = 100) -> str:
    """``[3] line 4:     y = x + 1   {"y": "2"}`` (a malformed frame: ``[3] ?? reason: text``)."""
    if step.frame is None:
        return f"[{index}] ?? {step.error}: {step.text[:truncate]!r}"
    frame = step.frame
    where = f"line {frame.lineno}" if frame.lineno else "line ?"
    head = f"[{index}] {frame.event:<9} {where:>8}: {frame.line.rstrip()}"
    if frame.event in (CALL, LINE):
        shown = {k: v for k, v in frame.locals.items() if v != ".."}
        tail = f"   {json.dumps(shown)}" if shown else ""
    else:
        tail = f"   -> {frame.value}"
    marks = "".join(f" ({m})" for m in (
        "given" if step.origin == "given" else None, "set" if step.origin == "set" else None,
        "body not predicted" if step.skipped else None, step.error) if m)
    return head + tail + marks


def format_frame(frame) -> str:
    if frame is None:
        return "-"
    line = f"{frame.event} {frame.lineno}: {frame.line.strip()}"
    if frame.event in (CALL, LINE):
        return f"{line} {json.dumps(frame.locals)}"
    return f"{line} -> {frame.value}"


def format_rows(rows: list[Row], width: int = 60) -> list[str]:
    """Predicted and real frames side by side; ``!!`` marks the first divergence, ``!`` later ones."""
    first = first_divergence(rows)
    out = [f"   {'#':>3}  {'predicted':<{width}}  real"]
    for row in rows:
        mark = "!!" if row is first else ("  " if row.same else " !")
        predicted = "-" if row.predicted is None else (
            format_frame(row.predicted.frame) if row.predicted.frame else f"?? {row.predicted.error}")
        verdict = "" if row.same else f"   <- {row.verdict}"
        index = "" if row.index < 0 else row.index
        out.append(f"{mark} {index:>3}  {predicted[:width]:<{width}}  {format_frame(row.real)[:width]}{verdict}")
    return out


def format_source(source: str, current: int | None, breakpoints: set[int]) -> str:
    lines = []
    for number, text in enumerate(source.split("\n"), 1):
        mark = "->" if number == current else "  "
        stop = "B" if number in breakpoints else " "
        lines.append(f"{number:>4} {stop}{mark} {text}")
    return "\n".join(lines).rstrip()


class DebuggerShell(cmd.Cmd):
    prompt = "(cwmdbg) "

    def __init__(self, debugger: NeuralDebugger, truth: TruthSource, *, stdout=None):
        super().__init__(stdout=stdout or sys.stdout)
        self.debugger, self.truth = debugger, truth

    def say(self, text: str) -> None:
        """Write a line; what the model wrote is in it, so control characters are shown as ``?``."""
        self.stdout.write(terminal_text(text) + "\n")
        self.stdout.flush()

    def show_current(self) -> None:
        if self.debugger.finished:
            self.say("the model ended the trace (back or reset)")
            return
        self.say(format_step(len(self.debugger.steps) - 1, self.debugger.current))

    def _move(self, move) -> None:
        try:
            move()
        except (DebuggerError, CompleterUnavailable) as exc:  # the session stays as it was
            self.say(f"*** {exc}")
            return
        self.show_current()

    def emptyline(self) -> bool:  # an empty line does nothing (pdb repeats; a model step is not free)
        return False

    def default(self, line: str) -> bool:
        self.say(f"*** unknown command {line.split()[0]!r} (help lists them)")
        return False

    def do_help(self, arg: str) -> None:
        self.say(HELP)

    def do_step(self, arg: str) -> None:
        self._move(self.debugger.step)

    def do_next(self, arg: str) -> None:
        self._move(self.debugger.next)

    def do_out(self, arg: str) -> None:
        self._move(self.debugger.out)

    def do_back(self, arg: str) -> None:
        self._move(self.debugger.back)

    def do_continue(self, arg: str) -> None:
        self._move(self.debugger.continue_)

    def do_reset(self, arg: str) -> None:
        self._move(self.debugger.reset)

    def do_break(self, arg: str) -> None:
        if not arg.strip():
            points = sorted(self.debugger.session.breakpoints)
            self.say("breakpoints: " + (", ".join(map(str, points)) if points else "none"))
            return
        try:
            self.debugger.set_breakpoint(int(arg))
            self.say(f"breakpoint at line {int(arg)}")
        except ValueError as exc:
            self.say(f"*** {exc if isinstance(exc, DebuggerError) else f'break takes a line number, not {arg!r}'}")

    def do_clear(self, arg: str) -> None:
        try:
            self.debugger.clear_breakpoint(int(arg))
        except ValueError:
            self.say(f"*** clear takes a line number, not {arg!r}")

    def do_print(self, arg: str) -> None:
        if self.debugger.finished:
            self.say("*** the trace has ended (back or reset)")
            return
        values = self.debugger.visible_locals()
        name = arg.strip()
        if not name:
            self.say(json.dumps(values))
        elif name in values:
            self.say(values[name])
        else:
            self.say(f"*** no local {name!r}")

    def do_set(self, arg: str) -> None:
        name, equals, value = arg.partition("=")
        if not equals or not name.strip():
            self.say("*** usage: set NAME = VALUE")
            return
        self._move(lambda: self.debugger.set_local(name.strip(), value))

    def do_list(self, arg: str) -> None:
        current = None if self.debugger.finished else getattr(self.debugger.current.frame, "lineno", None)
        self.say(format_source(self.debugger.source, current, self.debugger.session.breakpoints))

    def do_where(self, arg: str) -> None:
        for depth, (name, lineno) in enumerate(self.debugger.stack()):
            self.say(f"{'  ' * depth}{name}  (line {lineno})")

    def do_truth(self, arg: str) -> None:
        truth = self.truth.for_session(self.debugger)
        if truth.trace is None:
            self.say(f"*** no real trace: {truth.reason}")
            return
        steps = self.debugger.steps[: truth.upto]
        rows = align(steps, truth.trace.frames, finished=self.debugger.finished and truth.upto == len(
            self.debugger.steps))
        self.say(f"real trace of {truth.call} ({len(truth.trace.frames)} frames, {truth.trace.status})")
        if truth.reason:
            self.say(f"note: {truth.reason}")
        for line in format_rows(rows):
            self.say(line)
        first = first_divergence(rows)
        self.say("no divergence so far" if first is None else
                 f"first divergence at frame {first.index}: {first.verdict}")

    def do_quit(self, arg: str) -> bool:
        return True

    def do_EOF(self, arg: str) -> bool:
        self.say("")
        return True

    # abbreviations
    do_s, do_n, do_o, do_b, do_c, do_p, do_l, do_w, do_h, do_q = (
        do_step, do_next, do_out, do_back, do_continue, do_print, do_list, do_where, do_help, do_quit)
    do_exit = do_quit



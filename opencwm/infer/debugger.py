"""The neural debugger: a debugging session whose every frame is predicted by the model.

The prompt is exactly CWM's trace format (``<|trace_context_start|>``, the source with ``# << START_OF_TRACE`` on
the entry function's ``def`` line, ``<|frame_sep|>``, then the frames so far); each move asks the ``Completer`` for
the next frame, up to ``<|frame_sep|>``. Moves, as in CWM's ``demos/cwmdbg.py``:

- ``step``: the next frame; from a call frame, into the function (the event is forced to ``line``);
- ``next``: the next frame; when it is a call, the model is made to predict the call's return right away (the event
  is forced to ``return``: the body is never predicted), then the line after it;
- ``out``: on until the current function returns (its body entered when at its call frame, nested calls predicted
  as ``next`` does), then one more frame;
- ``back``: forget the last frame; ``continue``: ``step`` until a line with a breakpoint (or the end);
- ``set NAME = VALUE``: edit a local of the current frame; the edited frame replaces the predicted one and
  prediction continues from it;
- ``reset``: start again from the entry call: the given one (``call``), or one whose arguments the model samples.

The model's output is untrusted: a frame that does not parse, names a line that is not in the source or never
closes becomes a ``Step`` with an ``error`` (shown as such; ``back`` or ``set`` go on from it), and a predicted end
of the trace ends the session.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace

from opencwm.infer.completer import Completer
from opencwm.special_tokens import CALL_SEP, END_OF_TEXT, EXCEPTION_SEP, FRAME_SEP, LINE_SEP, RETURN_SEP
from opencwm.trace.calls import CLOSES
from opencwm.trace.codec import (
    TraceDecodeError,
    assign_line_numbers,
    decode_frame,
    encode_context,
    encode_frame,
    resolve_locals,
)
from opencwm.trace.record import CALL, EXCEPTION, LINE, RETURN, Frame

EVENT_TOKENS = {CALL: CALL_SEP, LINE: LINE_SEP, RETURN: RETURN_SEP, EXCEPTION: EXCEPTION_SEP}


class DebuggerError(ValueError):
    """A command that cannot be carried out here (one line for the user; the session is unchanged)."""


@dataclass
class Step:
    """One frame of the session: its tokens (without the closing ``<|frame_sep|>``) and what they say."""

    tokens: list[int]
    text: str
    frame: Frame | None  # None when the text is not a frame
    error: str | None = None  # why the text is not a frame (or names a line not in the source)
    origin: str = "model"  # "model", "given" (the entry call of ``--call``) or "set" (edited by the user)
    forced: str | None = None  # the event the debugger imposed on the model
    skipped: bool = False  # a call whose body was not predicted (``next``/``out``: its return came right after)

    @property
    def event(self) -> str | None:
        return self.frame.event if self.frame else None


@dataclass
class Session:
    """Where a session stands: the steps so far, whether the model ended the trace, the breakpoints."""

    steps: list[Step] = field(default_factory=list)
    finished: bool = False
    breakpoints: set[int] = field(default_factory=set)


def entry_function(source: str, call: str | None) -> tuple[str, int]:
    """The entry function's name and ``def`` line: the function ``call`` calls (``f(1, 2)`` or just ``f``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise DebuggerError(f"the program does not parse: line {exc.lineno}: {exc.msg}") from None
    functions = {node.name: node.lineno for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if call is None:
        raise DebuggerError("no entry function: give --call NAME or --call 'NAME(ARGS)'")
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError:
        raise DebuggerError(f"bad --call {call!r}: expected NAME or NAME(ARGS)") from None
    target = node.func if isinstance(node, ast.Call) else node
    if not isinstance(target, ast.Name):
        raise DebuggerError(f"bad --call {call!r}: expected NAME or NAME(ARGS)")
    if target.id not in functions:
        raise DebuggerError(f"--call {call!r}: no function {target.id!r} in the program")
    return target.id, functions[target.id]


def has_arguments(call: str | None) -> bool:
    """Whether ``call`` gives the arguments (``f(1)``, ``f()``) rather than only the function (``f``)."""
    if call is None:
        return False
    try:
        return isinstance(ast.parse(call.strip(), mode="eval").body, ast.Call)
    except SyntaxError:
        return False


class NeuralDebugger:
    def __init__(self, completer: Completer, source: str, entry_lineno: int, *, first_frame: Frame | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, max_frame_tokens: int = 512, seed: int | None = None,
                 max_moves: int = 1000):
        self.completer = completer
        self.tokenizer = completer.tokenizer
        self.source = source
        self.entry_lineno = entry_lineno
        self.first_frame = first_frame  # the given entry call; None: the model samples the arguments
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.max_frame_tokens = max_frame_tokens
        self.max_moves = max_moves  # frames ``continue`` and ``out`` predict at most before they stop
        self.context = self.tokenizer.encode(encode_context(source, entry_lineno), allow_special=True)
        self.frame_sep = self.tokenizer.token_id(FRAME_SEP)
        self.end = self.tokenizer.token_id(END_OF_TEXT)
        self.event_ids = {event: self.tokenizer.token_id(token) for event, token in EVENT_TOKENS.items()}
        self.session = Session()
        self.reset()

    # -- state -------------------------------------------------------------------------------------------------------
    @property
    def steps(self) -> list[Step]:
        return self.session.steps

    @property
    def current(self) -> Step:
        return self.steps[-1]

    @property
    def finished(self) -> bool:
        return self.session.finished

    def prompt(self) -> list[int]:
        tokens = list(self.context)
        for step in self.steps:
            tokens += step.tokens
            tokens.append(self.frame_sep)
        return tokens

    def depths(self) -> list[int]:
        """The scope depth of every step: a call opens depth d + 1 (its own frame is at d + 1), a line is at the
        depth of its scope, a return or exception at the depth it closes. The entry call is at depth 1."""
        out, depth = [], 0
        for step in self.steps:
            event = step.event
            if event == CALL:
                depth += 1
            out.append(depth)
            if event in CLOSES:
                depth -= 1
        return out

    def visible_locals(self, index: int | None = None) -> dict[str, str]:
        """The locals of the scope at step ``index`` (the current one by default), with ``".."`` resolved by
        scope; at a return or exception frame, those of the scope it closes, just before it closes."""
        index = len(self.steps) - 1 if index is None else index
        depths = self.depths()
        known = [(i, s.frame) for i, s in enumerate(self.steps[: index + 1]) if s.frame is not None]
        resolved = dict(zip((i for i, _ in known), resolve_locals([frame for _, frame in known])))
        for i in range(index, -1, -1):  # the newest call or line frame of the same scope
            if depths[i] < depths[index]:
                break
            if depths[i] == depths[index] and resolved.get(i) is not None:
                return resolved[i]
        return {}

    def stack(self) -> list[tuple[str, int | None]]:
        """The open scopes, outermost first: each function's ``def`` line text and its current line number."""
        scopes: list[list] = []
        for step in self.steps:
            frame = step.frame
            if frame is None:
                continue
            if frame.event == CALL:
                scopes.append([frame.line.strip(), frame.lineno])
            elif frame.event == LINE and scopes:
                scopes[-1][1] = frame.lineno
            elif frame.event in CLOSES and scopes and step is not self.current:
                scopes.pop()
        return [(name, lineno) for name, lineno in scopes]

    # -- asking the model --------------------------------------------------------------------------------------------
    def _predict(self, event: str | None = None) -> None:
        """Append the model's next frame (its event forced to ``event`` when given), or end the session."""
        if self.finished:
            raise DebuggerError("the trace has ended (back or reset)")
        prompt = self.prompt()
        forced = [self.event_ids[event]] if event else []
        room = self.completer.context_length - len(prompt) - len(forced)
        if room <= 1:
            raise DebuggerError(f"the context of {self.completer.context_length} tokens is full")
        [tokens] = self.completer.complete(prompt + forced, stop=(self.frame_sep, self.end),
                                           max_tokens=min(self.max_frame_tokens, room), temperature=self.temperature,
                                           top_p=self.top_p, seed=self.seed)
        if not forced and tokens[:1] == [self.end]:
            self.session.finished = True
            return
        closed = bool(tokens) and tokens[-1] == self.frame_sep
        body = forced + (tokens[:-1] if closed else tokens)
        self.steps.append(self._read(body, closed=closed, forced=event))

    def _read(self, tokens: list[int], *, closed: bool, forced: str | None = None, origin: str = "model") -> Step:
        text = self.tokenizer.decode(tokens)
        error = None
        frame = None
        if not closed:
            ended = tokens and tokens[-1] == self.end
            error = ("the model ended the trace inside a frame" if ended
                     else f"no {FRAME_SEP} within {self.max_frame_tokens} tokens")
        else:
            try:
                frame = decode_frame(text)
            except TraceDecodeError as exc:
                error = str(exc)
        step = Step(tokens=tokens, text=text, frame=frame, error=error, forced=forced, origin=origin)
        if frame is not None:
            self._number(step)
        return step

    def _number(self, step: Step) -> None:
        """Give the new step's frame its line number, matched by scope against the source."""
        frames = [s.frame for s in self.steps if s.frame is not None] + [step.frame]
        assign_line_numbers(self.source, frames)
        if step.frame.lineno is None:
            step.error = f"line {step.frame.line.strip()!r} is not in the source"

    # -- moves -------------------------------------------------------------------------------------------------------
    def _written_step(self, frame: Frame, origin: str) -> Step:
        """A step whose frame the debugger wrote (the given entry call, an edited frame), tokenized as training
        tokenizes frames, numbered after the steps so far."""
        text = encode_frame(frame)
        step = Step(tokens=self.tokenizer.encode(text, allow_special=True), text=text, frame=replace(frame),
                    origin=origin)
        self._number(step)
        return step

    def reset(self) -> Step:
        """Start again: the given entry call, or one the model writes (its arguments sampled)."""
        self.session = Session(breakpoints=self.session.breakpoints)
        if self.first_frame is not None:
            self.steps.append(self._written_step(self.first_frame, "given"))
        else:
            self._predict(CALL)  # a forced event: the model cannot end the trace here
        return self.current

    def step(self) -> Step:
        self._predict(LINE if self.current.event == CALL else None)
        return self.current

    def next(self) -> Step:
        self._predict()
        if not self.finished and self.current.event == CALL:
            self._skip_call()
            if not self.finished and self.current.frame is not None:
                self._predict()
        return self.current

    def _skip_call(self) -> None:
        """The current step is a call: have the model predict its return at once."""
        self.current.skipped = True
        self._predict(RETURN)

    def out(self) -> Step:
        depth = self.depths()[-1] if self.current.event not in CLOSES else self.depths()[-1] - 1
        if depth < 1:
            raise DebuggerError("no function to step out of")
        for _ in range(self.max_moves):
            if self.finished or self.current.frame is None:
                break
            if self.current.event == CALL and self.depths()[-1] > depth:
                self._skip_call()
            else:  # from the call frame of the function being left, into its body (as ``step``)
                self._predict(LINE if self.current.event == CALL else None)
            if self.current.event in CLOSES and self.depths()[-1] == depth:
                if not self.finished:
                    self._predict()
                break
        return self.current

    def back(self) -> Step:
        if self.finished:
            self.session.finished = False
        elif len(self.steps) > 1:
            self.steps.pop()
        else:
            raise DebuggerError("at the first frame")
        if self.current.skipped and self.current.event == CALL:
            self.current.skipped = False
        return self.current

    def continue_(self) -> Step:
        """``step`` until a line frame on a breakpoint, the end of the trace, a malformed frame or ``max_moves``."""
        for _ in range(self.max_moves):
            if self.finished or self.current.frame is None:
                break
            self.step()
            if (self.current.event == LINE and self.current.frame.lineno in self.session.breakpoints) \
                    or self.current.error:
                break
        return self.current

    def set_local(self, name: str, value: str) -> Step:
        """Edit a local of the current (call or line) frame; later prediction starts from the edited frame."""
        step = self.current
        if self.finished:
            raise DebuggerError("the trace has ended (back or reset)")
        if step.frame is None or step.event not in (CALL, LINE):
            raise DebuggerError("only the locals of a call or line frame can be set")
        try:
            ast.parse(value.strip(), mode="eval")
        except SyntaxError:
            raise DebuggerError(f"{value!r} is not a Python expression (give the value as its repr, e.g. 'abc' "
                                "or [1, 2])") from None
        if name not in (step.frame.locals or {}):
            raise DebuggerError(f"no local {name!r} here (locals: {', '.join(step.frame.locals or {}) or 'none'})")
        self.steps.pop()
        self.steps.append(self._written_step(replace(step.frame, locals={**step.frame.locals, name: value.strip()}),
                                             "set"))
        return self.current

    def set_breakpoint(self, lineno: int) -> None:
        lines = self.source.split("\n")
        if not 1 <= lineno <= len(lines) or not lines[lineno - 1].strip():
            raise DebuggerError(f"line {lineno} is not a line of code in the source")
        self.session.breakpoints.add(lineno)

    def clear_breakpoint(self, lineno: int) -> None:
        self.session.breakpoints.discard(lineno)

    def run_to_end(self) -> None:
        """``step`` until the trace ends, a frame is malformed or ``max_moves`` frames were predicted."""
        for _ in range(self.max_moves):
            if self.finished or self.current.frame is None or self.current.error:
                return
            self.step()

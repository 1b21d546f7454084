"""The trace builder: turns the interpreter's events on live frames into CWM frames (see ``record`` for the frame
semantics), within per-trace limits. The backends that feed it are in ``tracer``; ``_native.c`` mirrors its event
handling in C and calls back into it for rare work."""

from __future__ import annotations

import dis
import inspect
import types
from dataclasses import dataclass
from typing import Any

from opencwm.trace.record import CALL, ERROR, EXCEPTION, LINE, OK, RAISED, RETURN, TRUNCATED, UNCHANGED, Frame, Trace
from opencwm.trace.source_map import SourceMap, is_traced_scope
from opencwm.trace.values import DEFAULT_MAX_CHARS, IMMUTABLE_ATOMS, Renderer

RETURN_OPS = frozenset(dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in dis.opmap)
# After a yield, 3.11/3.12 report the YIELD_VALUE itself, 3.13 the RESUME that follows it.
YIELD_OPS = frozenset(dis.opmap[name] for name in ("YIELD_VALUE", "RESUME") if name in dis.opmap)
GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


@dataclass
class Limits:
    max_frames: int = 10_000
    max_bytes: int = 1_000_000  # characters of rendered locals, values and lines
    max_value_chars: int = DEFAULT_MAX_CHARS


class LimitReached(BaseException):
    """Raised into the traced program to stop it once a per-trace limit is hit (BaseException so that the usual
    ``except Exception`` in user code does not swallow it)."""


MUTABLE = object()  # cache marker: the rendering of a mutable object must be redone at every step


class _Scope:
    """What the builder remembers about one live function frame."""

    __slots__ = ("cache", "exception", "fresh_exception", "last_event", "last_statement", "names", "raw_names")

    def __init__(self) -> None:
        # name -> (the object if immutable else MUTABLE, its rendering, a fingerprint proving it unchanged or None)
        self.cache: dict[str, tuple[Any, str, Any]] = {}
        self.raw_names: list[str] = []  # f_locals' key order at the last snapshot ...
        self.names: list[str] = []  # ... and the order the trace shows (first bound first)
        self.last_event = ""
        self.last_statement = 0
        self.exception: BaseException | None = None  # the exception most recently raised into this frame
        self.fresh_exception = False  # raised since the last line event


class TraceBuilder:
    """Turns interpreter events into frames; backends call the ``on_*`` methods with the live frame object."""

    __slots__ = ("_bytes", "_max_bytes", "_max_frames", "_renderer", "_scopes", "_statement_of", "abort_on_limit",
                 "def_lines", "entry_frame", "error", "filename", "finished", "frames", "map", "max_value_chars",
                 "status")

    def __init__(self, source_map: SourceMap, filename: str, limits: Limits, *, abort_on_limit: bool = True):
        self.map = source_map
        self.abort_on_limit = abort_on_limit  # else stop recording and let the program run on
        self.filename = filename
        self.max_value_chars = limits.max_value_chars
        self._renderer: Renderer | None = None
        self.frames: list[Frame] = []
        self.status = OK
        self.error: str | None = None
        self.entry_frame: types.FrameType | None = None
        self.finished = False
        self._scopes: dict[types.FrameType, _Scope] = {}
        self._statement_of = source_map.statement_of
        self.def_lines = source_map.code_cache(filename)  # code -> its def line if it is stepped into, else None
        self._bytes = 0
        self._max_frames, self._max_bytes = limits.max_frames, limits.max_bytes

    @property
    def renderer(self) -> Renderer:
        """The trace's renderer, made on first use (the C backend renders most values itself)."""
        if self._renderer is None:
            self._renderer = Renderer(self.max_value_chars)
        return self._renderer

    def is_traced(self, code: types.CodeType) -> bool:
        return self.traced_def_line(code) is not None

    def traced_def_line(self, code: types.CodeType) -> int | None:
        """The ``def`` line a call of ``code`` shows, or None for code that is not stepped into."""
        if code in self.def_lines:
            return self.def_lines[code]
        traced = code.co_filename == self.filename and is_traced_scope(code)
        line = self.def_lines[code] = self.map.def_line(code) if traced else None
        return line

    # -- events ---------------------------------------------------------------------------------------------------
    def on_call(self, frame: types.FrameType) -> None:
        if self.finished:
            return
        if self.entry_frame is None:
            self.entry_frame = frame
        scope = self._scopes.get(frame)
        if scope is None:
            scope = self._scopes[frame] = _Scope()
        # Call frames always carry every local in full, so a reader needs no earlier frame to know the state.
        locals_, size = self._snapshot(scope, frame, True)
        lineno = self.map.def_line(frame.f_code)
        self._emit(scope, CALL, lineno, locals_, None, size)

    def on_line(self, frame: types.FrameType, lineno: int | None = None) -> None:
        scope = self._scopes.get(frame)
        if scope is None or self.finished:
            return
        scope.fresh_exception = False
        if lineno is None:
            lineno = frame.f_lineno
        statement = self._statement_of.get(lineno, lineno)
        # A statement reported again without another step of this scope in between (continuation lines of a
        # multi-line statement, loops inside one line, 3.12's inlined comprehensions) is one step.
        if scope.last_event == LINE and scope.last_statement == statement:
            return
        locals_, size = self._snapshot(scope, frame, False)
        self._emit(scope, LINE, statement, locals_, None, size)

    def on_exception(self, frame: types.FrameType, exception: BaseException) -> None:
        scope = self._scopes.get(frame)
        if scope is not None:
            scope.exception = exception
            scope.fresh_exception = True

    def on_return(self, frame: types.FrameType, value: Any) -> None:
        """A frame of the traced source is left normally, or a generator yields (its scope stays alive)."""
        self._leave(frame, RETURN, value)

    def on_yield(self, frame: types.FrameType, value: Any) -> None:
        """A generator suspends: shown as a return frame with the yielded value; its scope stays alive and its
        resumption is a call frame."""
        self._leave(frame, RETURN, value, suspended=True)

    def on_unwind(self, frame: types.FrameType, exception: BaseException | None) -> None:
        scope = self._scopes.get(frame)
        if scope is not None and exception is None:
            exception = scope.exception
        self._leave(frame, EXCEPTION, exception)

    def classify_settrace_return(self, frame: types.FrameType) -> str:
        """``sys.settrace`` reports returns, yields and unwinding all as 'return'; the instruction tells them
        apart."""
        op = frame.f_code.co_code[frame.f_lasti]
        if op in RETURN_OPS:
            return RETURN
        scope = self._scopes.get(frame)
        if frame.f_code.co_flags & GENERATOR_FLAGS and op in YIELD_OPS and not (scope and scope.fresh_exception):
            return "yield"
        return EXCEPTION

    def settrace_event(self, frame: types.FrameType, event: str, arg: Any):
        """A ``sys.settrace`` event of a frame being stepped into; returns itself for the frame's next events."""
        if event == "line":
            self.on_line(frame)
        elif event == "return":
            kind = self.classify_settrace_return(frame)
            if kind == "yield":
                self.on_yield(frame, arg)
            elif kind == RETURN:
                self.on_return(frame, arg)
            else:
                self.on_unwind(frame, None)
        elif event == "exception":
            self.on_exception(frame, arg[1])
        return self.settrace_event

    def release_frames(self) -> None:
        """Let go of the interpreter frames once the run is over: a frame object kept past its run refers to its
        callers' frames, whose locals hold this builder, and that cycle would leave the whole trace (thousands of
        frames) to the cyclic GC instead of freeing it when the last reference goes."""
        self.entry_frame = None
        self._scopes.clear()

    def to_trace(self, source: str, entry_lineno: int) -> Trace:
        trace = Trace(source, entry_lineno, self.frames, self.status, self.error)
        if not self.frames and trace.status != ERROR:
            trace.status, trace.error = ERROR, "the entry function ran no traced code"
        return trace

    # -- helpers --------------------------------------------------------------------------------------------------
    def _leave(self, frame: types.FrameType, event: str, value: Any, *, suspended: bool = False) -> None:
        scope = self._scopes.get(frame)
        if scope is None or self.finished:
            return
        statement = self.map.statement_line(frame.f_lineno)
        text = self.renderer.render(value)
        self._emit(scope, event, statement, None, text, len(text))
        if not suspended:
            del self._scopes[frame]
        if frame is self.entry_frame:
            self.finished = True
            self.status = OK if event == RETURN else RAISED

    def _snapshot(self, scope: _Scope, frame: types.FrameType, full: bool) -> tuple[dict[str, str], int]:
        """The locals as the frame shows them, and the characters newly rendered (for the size limit)."""
        f_locals = frame.f_locals
        raw_names = list(f_locals)
        cache = scope.cache
        names = scope.names if raw_names == scope.raw_names else self._order_names(scope, frame, raw_names)
        out: dict[str, str] = {}
        renderer = self.renderer
        unchanged = renderer.unchanged
        size = 0
        for name in names:
            obj = f_locals[name]
            before = cache.get(name)
            if before is not None and (before[0] is obj or (before[2] is not None and unchanged(obj, before[2]))):
                # An immutable object still bound, or a container whose proof holds: its repr cannot have
                # changed, so it is not rendered again.
                out[name] = before[1] if full else UNCHANGED
                continue
            text = renderer.render(obj)
            out[name] = shown = UNCHANGED if (before is not None and not full and before[1] == text) else text
            size += len(shown)
            if type(obj) in IMMUTABLE_ATOMS:
                cache[name] = (obj, text, None)
            else:  # a builtin container gets a cheap proof that it is unchanged, checked instead of rendering it
                cache[name] = (MUTABLE, text, renderer.fingerprint(obj, text))
        return out, size

    def _order_names(self, scope: _Scope, frame: types.FrameType, raw_names: list[str]) -> list[str]:
        names = self.order_names(frame.f_code, scope.names, raw_names)
        for gone in scope.cache.keys() - set(names):  # no longer bound: what was known of its value goes too
            del scope.cache[gone]
        scope.raw_names, scope.names = raw_names, names
        return names

    def order_names(self, code: types.CodeType, names: list[str], raw_names: list[str]) -> list[str]:
        """The order the trace shows a scope's locals in, given the previous order and the frame's current names.

        Names keep the order in which they were first bound; names new in this step follow in source order,
        so the order does not depend on the Python version's co_varnames. Hidden interpreter locals (".0") are
        left out, and names no longer bound."""
        present = set(raw_names)
        kept = [name for name in names if name in present]
        if len(kept) < len(raw_names):
            known = set(kept)
            new = [name for name in raw_names if name not in known and name[:1] != "."]
            if new:
                kept += self.map.new_names_order(code, new)
        return kept

    def _emit(self, scope: _Scope, event: str, lineno: int, locals_: dict | None, value: str | None,
              size: int) -> None:
        line = self.map.texts.get(lineno, "")
        frames = self.frames
        frames.append(Frame(event, line, lineno, locals_, value))
        scope.last_event = event
        scope.last_statement = lineno
        self._bytes += size + len(line)
        if len(frames) >= self._max_frames or self._bytes >= self._max_bytes:
            self.finished = True
            self.status = TRUNCATED
            which = "frames" if len(frames) >= self._max_frames else "bytes"
            self.error = f"trace cut at the {which} limit ({len(frames)} frames, {self._bytes} chars)"
            if self.abort_on_limit:
                raise LimitReached(self.error)

"""The execution tracer: runs one call and records its CWM frames (see ``record`` for the frame semantics).

Three interchangeable backends feed one ``TraceBuilder`` and give byte-identical traces (tested on CruxEval):

- ``native`` (every CPython, where the C accelerator ``_native.c`` is built; the default there): the same events
  as ``settrace`` handled by a C trace function (``PyEval_SetTrace``), which calls back into the builder only for
  rare work (a new code object, a value only the Python renderer can render). No Python call per event.
- ``settrace`` (every CPython, pure Python, the reference): a ``sys.settrace`` hook that returns a local tracer
  only for code objects of the traced source, so other code pays one call event per Python call and nothing per
  line.
- ``monitoring`` (CPython 3.12+, PEP 669): ``sys.monitoring`` with line and return events switched on only for
  code objects of the traced source, and the start event disabled at every other code location after its first
  hit, so untraced code runs at full speed after warm-up.

Only code of the traced source is stepped into (``source.is_traced_scope`` on code whose file is the traced file);
stdlib, site-packages and builtins run untraced. Comprehensions are atomic (see ``source``).

Determinism: values are rendered by ``render.Renderer`` (addresses renumbered); set and dict orders of strings
depend on the hash seed, so collection runs children with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import dis
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opencwm.trace.record import CALL, ERROR, EXCEPTION, LINE, OK, RAISED, RETURN, TRUNCATED, UNCHANGED, Frame, Trace
from opencwm.trace.source_map import SourceMap, is_traced_scope
from opencwm.trace.values import DEFAULT_MAX_CHARS, IMMUTABLE_ATOMS, Renderer

_RETURN_OPS = frozenset(dis.opmap[name] for name in ("RETURN_VALUE", "RETURN_CONST") if name in dis.opmap)
# After a yield, 3.11/3.12 report the YIELD_VALUE itself, 3.13 the RESUME that follows it.
_YIELD_OPS = frozenset(dis.opmap[name] for name in ("YIELD_VALUE", "RESUME") if name in dis.opmap)
_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

try:  # the C accelerator, built by the install when a compiler is there (see setup.py)
    from opencwm.trace import _native
except ImportError:
    _native = None

BACKENDS = ("native", "settrace", "monitoring")


def native_available() -> bool:
    return _native is not None


def default_backend() -> str:
    if _native is not None:
        return "native"
    return "monitoring" if sys.version_info >= (3, 12) else "settrace"


@dataclass
class Limits:
    max_frames: int = 10_000
    max_bytes: int = 1_000_000  # characters of rendered locals, values and lines
    max_value_chars: int = DEFAULT_MAX_CHARS


class LimitReached(BaseException):
    """Raised into the traced program to stop it once a per-trace limit is hit (BaseException so that the usual
    ``except Exception`` in user code does not swallow it)."""


_MUTABLE = object()  # cache marker: the rendering of a mutable object must be redone at every step


class _Scope:
    """What the builder remembers about one live function frame."""

    __slots__ = ("cache", "exception", "fresh_exception", "last_event", "last_statement", "names", "raw_names")

    def __init__(self) -> None:
        # name -> (the object if immutable else _MUTABLE, its rendering, a fingerprint proving it unchanged or None)
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
        if op in _RETURN_OPS:
            return RETURN
        scope = self._scopes.get(frame)
        if frame.f_code.co_flags & _GENERATOR_FLAGS and op in _YIELD_OPS and not (scope and scope.fresh_exception):
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
                cache[name] = (_MUTABLE, text, renderer.fingerprint(obj, text))
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


# -- backends ---------------------------------------------------------------------------------------------------------
def settrace_local(builder: TraceBuilder) -> Callable:
    """The per-frame ``sys.settrace`` function that feeds ``builder``: a bound method that returns itself anew, not
    a closure that refers to itself (that cycle would keep the builder and its frames alive after the run)."""
    return builder.settrace_event


def _run_settrace(builder: TraceBuilder, func: Callable, args: tuple, kwargs: dict) -> None:
    local = settrace_local(builder)

    def global_(frame, event, arg):
        if event != "call" or builder.finished or not builder.is_traced(frame.f_code):
            return None
        builder.on_call(frame)
        return local

    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        func(*args, **kwargs)
    finally:
        sys.settrace(previous)


def _run_native(builder: TraceBuilder, func: Callable, args: tuple, kwargs: dict) -> None:
    """The ``settrace`` backend's events handled in C (``_native.c``), feeding the same builder: ``_native.record``
    runs the call under a new recorder and hands the outcome to the builder."""
    _native.record(builder, func, args, kwargs)


if _native is not None:
    _native.configure(Frame, LimitReached, _MUTABLE, _RETURN_OPS, _YIELD_OPS, _GENERATOR_FLAGS)


def _run_monitoring(builder: TraceBuilder, func: Callable, args: tuple, kwargs: dict) -> None:
    mon = sys.monitoring
    events = mon.events
    tool = next((t for t in (mon.DEBUGGER_ID, 3, 4) if mon.get_tool(t) is None), None)
    if tool is None:
        raise RuntimeError("no free sys.monitoring tool id")
    local_events = events.LINE | events.PY_RETURN | events.PY_YIELD | events.PY_RESUME
    enabled: set[types.CodeType] = set()
    disable = mon.DISABLE

    frame_of = sys._getframe  # frame_of(1) in a callback is the instrumented frame (0 is the callback's own)

    def on_start(code, offset):
        if builder.finished or not builder.is_traced(code):
            return disable
        if code not in enabled:
            mon.set_local_events(tool, code, local_events)
            enabled.add(code)
        builder.on_call(frame_of(1))

    def on_resume(code, offset):
        builder.on_call(frame_of(1))

    def on_line(code, line):
        builder.on_line(frame_of(1), line)

    def on_return(code, offset, value):
        builder.on_return(frame_of(1), value)

    def on_yield(code, offset, value):
        builder.on_yield(frame_of(1), value)

    def on_unwind(code, offset, exception):
        if builder.is_traced(code):
            builder.on_unwind(frame_of(1), exception)

    def on_throw(code, offset, exception):
        if builder.is_traced(code):
            builder.on_call(frame_of(1))

    callbacks = {
        events.PY_START: on_start,
        events.PY_RESUME: on_resume,
        events.LINE: on_line,
        events.PY_RETURN: on_return,
        events.PY_YIELD: on_yield,
        events.PY_UNWIND: on_unwind,
        events.PY_THROW: on_throw,
    }
    mon.use_tool_id(tool, "opencwm")
    try:
        for event, callback in callbacks.items():
            mon.register_callback(tool, event, callback)
        mon.restart_events()  # forget DISABLEs left by an earlier trace in this process
        mon.set_events(tool, events.PY_START | events.PY_UNWIND | events.PY_THROW)
        func(*args, **kwargs)
    finally:
        mon.set_events(tool, 0)
        for code in enabled:
            mon.set_local_events(tool, code, 0)
        for event in callbacks:
            mon.register_callback(tool, event, None)
        mon.free_tool_id(tool)


_RUNNERS = {"native": _run_native, "settrace": _run_settrace, "monitoring": _run_monitoring}


def trace_call(
    func: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    source: str,
    filename: str | None = None,
    source_map: SourceMap | None = None,
    limits: Limits | None = None,
    backend: str | None = None,
) -> Trace:
    """Call ``func(*args, **kwargs)`` and return its trace. ``source`` is the text of the file that defines
    ``func`` (``filename`` defaults to ``func``'s own file); functions of that file are stepped into."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown tracing backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "monitoring" and sys.version_info < (3, 12):
        raise ValueError("the monitoring backend needs Python 3.12 or newer")
    if backend == "native" and _native is None:
        raise ValueError("the native backend is not built here (it needs a C compiler at install time); "
                         "use settrace or monitoring")
    code = func.__code__
    source_map = source_map or SourceMap(source)
    builder = TraceBuilder(source_map, filename or code.co_filename, limits or Limits())
    runner = _RUNNERS[backend]
    try:
        runner(builder, func, args, kwargs or {})
    except LimitReached:
        pass
    except (KeyboardInterrupt, MemoryError):
        raise  # out of memory is the sandbox's outcome to report, not a trace to keep
    except BaseException as exc:
        if not builder.finished:  # the program's own exceptions end the entry scope first: this is the tracer's
            builder.finished, builder.status = True, ERROR
            builder.error = f"the tracer failed: {type(exc).__name__}: {exc}"
    builder.release_frames()
    return builder.to_trace(source, source_map.def_line(code))

"""The execution tracer: runs one call and records its CWM frames (frames are made by ``builder.TraceBuilder``).

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

Only code of the traced source is stepped into (``source_map.is_traced_scope`` on code whose file is the traced file);
stdlib, site-packages and builtins run untraced. Comprehensions are atomic (see ``source_map``).

Determinism: values are rendered by ``values.Renderer`` (addresses renumbered); set and dict orders of strings
depend on the hash seed, so collection runs children with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

from opencwm.trace.builder import GENERATOR_FLAGS, MUTABLE, RETURN_OPS, YIELD_OPS, LimitReached, Limits, TraceBuilder
from opencwm.trace.record import ERROR, Frame, Trace
from opencwm.trace.source_map import SourceMap

__all__ = ["BACKENDS", "Limits", "default_backend", "native_available", "settrace_local", "trace_call"]

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
    _native.configure(Frame, LimitReached, MUTABLE, RETURN_OPS, YIELD_OPS, GENERATOR_FLAGS)


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

"""Repository-level traces: run a package's own tests and trace every call the tests make into the package.

Each call from test code (or any code outside the package) into a function of the package becomes one trace
whose source is the module file that defines the function; calls into other functions of that module are stepped
into, as in any trace. Inputs are therefore real: whatever the test suite passes. To keep a suite from flooding
the data with one hot function, at most ``max_per_function`` traces are kept per function and test file, and a
call whose arguments render exactly like an earlier one of the same function is skipped.

Uses ``sys.settrace`` on every Python version: the harvester must decide per call whether a new trace starts, and
the cost of a call event is small next to a test suite's own work. A trace that hits its limits stops recording
(flagged truncated) instead of interrupting the test.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from opencwm.trace.builder import Limits, TraceBuilder
from opencwm.trace.record import TRUNCATED, Trace
from opencwm.trace.source_map import SourceMap, is_traced_scope
from opencwm.trace.tracer import settrace_local


@dataclass
class Harvested:
    module: str  # path of the module file, relative to the package root's parent
    function: str  # qualified name
    trace: Trace


class Harvester:
    def __init__(self, root: str | Path, packages: list[str], *, limits: Limits | None = None,
                 max_per_function: int = 3, max_traces: int = 1000):
        """``packages``: the package directories and single-module files (paths) whose functions are traced;
        ``root``: the repository directory that module paths are reported relative to."""
        self.root = str(Path(root).resolve())
        self.prefixes = tuple(
            str(Path(p).resolve()) + ("" if p.endswith(".py") else os.sep) for p in packages
        )
        self.limits = limits or Limits()
        self.max_per_function = max_per_function
        self.max_traces = max_traces
        self.results: list[Harvested] = []
        self._in_package: dict[str, bool] = {}
        self._maps: dict[str, SourceMap | None] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._seen_inputs: set[tuple[str, str, str]] = set()
        self._builder: TraceBuilder | None = None
        self._local = None
        self._entry: tuple[str, str] | None = None

    def in_package(self, filename: str) -> bool:
        hit = self._in_package.get(filename)
        if hit is None:
            name = os.path.basename(filename)
            hit = filename.startswith(self.prefixes) and not (
                name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
                or f"{os.sep}tests{os.sep}" in filename or f"{os.sep}test{os.sep}" in filename
            )
            self._in_package[filename] = hit
        return hit

    def _source_map(self, filename: str) -> SourceMap | None:
        if filename not in self._maps:
            try:
                self._maps[filename] = SourceMap(Path(filename).read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                self._maps[filename] = None
        return self._maps[filename]

    # -- the global trace function ------------------------------------------------------------------------------
    def __call__(self, frame: types.FrameType, event: str, arg):
        if event != "call":
            return None
        builder = self._builder
        if builder is not None:
            if builder.finished:
                self._finish()
            elif builder.is_traced(frame.f_code):
                builder.on_call(frame)
                return self._local
            else:
                return None
        code = frame.f_code
        filename = code.co_filename
        if not self.in_package(filename) or not is_traced_scope(code) or len(self.results) >= self.max_traces:
            return None
        caller = frame.f_back
        if caller is not None and self.in_package(caller.f_code.co_filename):
            return None  # an internal call of the package: part of some other trace, or of none
        key = (filename, code.co_qualname if hasattr(code, "co_qualname") else code.co_name)
        if self._counts.get(key, 0) >= self.max_per_function:
            return None
        source_map = self._source_map(filename)
        if source_map is None:
            return None
        builder = TraceBuilder(source_map, filename, self.limits, abort_on_limit=False)
        builder.on_call(frame)
        inputs = (*key, repr(builder.frames[0].locals))
        if inputs in self._seen_inputs:
            return None
        self._seen_inputs.add(inputs)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._builder, self._entry = builder, key
        self._local = self._wrap_local(settrace_local(builder))
        return self._local

    def _wrap_local(self, local):
        def traced(frame, event, arg):
            builder = self._builder
            if builder is None or builder.finished:
                return None
            local(frame, event, arg)
            if builder.finished:
                self._finish()
            return traced

        return traced

    def _finish(self) -> None:
        builder, (filename, function) = self._builder, self._entry
        self._builder = self._entry = self._local = None
        trace = builder.to_trace(builder.map.source, builder.map.def_line(builder.entry_frame.f_code))
        builder.release_frames()
        self.results.append(Harvested(os.path.relpath(filename, self.root), function, trace))

    def start(self) -> None:
        sys.settrace(self)

    def stop(self) -> None:
        sys.settrace(None)
        builder = self._builder
        if builder is not None and builder.frames and not builder.finished:
            # A call still running when the tests ended (e.g. interrupted): kept, flagged as cut.
            builder.finished, builder.status = True, TRUNCATED
            builder.error = "the call was still running when the test run ended"
            self._finish()

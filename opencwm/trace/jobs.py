"""Units of tracing work as the sandbox runs them: plain functions with JSON arguments and JSON results.

They run inside the sandbox's forked children (``Sandbox.run("opencwm.trace.jobs:NAME", ...)``) or, with
``--no-sandbox``, in the collecting process. They import only the standard library and ``opencwm.trace``, so any
CPython 3.11+ can run them.
"""

from __future__ import annotations

import os
import sys

from opencwm.trace.program import trace_program
from opencwm.trace.tracer import Limits, default_backend

PRELOAD = ("opencwm.trace.jobs",)  # what a sandbox that traces imports once, before its first job


def _limits(limits: dict | None) -> Limits:
    return Limits(**(limits or {}))


def interpreter() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def trace_program_job(source: str, call: str, limits: dict | None = None, backend: str | None = None) -> dict:
    backend = backend or default_backend()
    trace = trace_program(source, call, limits=_limits(limits), backend=backend)
    return {"trace": trace.to_dict(), "python": interpreter(), "backend": backend}


def harvest_tests_job(root: str, test_file: str, packages: list[str], limits: dict | None = None,
                      max_per_function: int = 3) -> dict:
    """Run one test file of the repository at ``root`` with pytest and trace its calls into ``packages``."""
    import pytest

    from opencwm.trace.harvest import Harvester

    for path in (root, os.path.join(root, "src")):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    os.chdir(root)
    harvester = Harvester(root, packages, limits=_limits(limits), max_per_function=max_per_function)
    args = [test_file, "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-o", "addopts=", "--no-header"]
    harvester.start()
    try:
        exit_code = int(pytest.main(args))
    finally:
        harvester.stop()
    return {
        "tests_exit_code": exit_code,
        "python": interpreter(),
        "backend": "settrace",
        "traces": [
            {"module": h.module, "function": h.function, "trace": h.trace.to_dict()} for h in harvester.results
        ],
    }

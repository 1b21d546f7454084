"""The one sandbox for untrusted code: tracing, test validation, agent commands and evaluation all run through it.

Guarantees: no network, no writes outside a private scratch directory, a wall-time and a memory limit per job,
the whole process tree killed at the end of every job, a capped process count, and a status for every outcome
(``ok``, ``exception``, ``timeout``, ``memory``, ``crash``, ``killed``). See ``isolation`` for the backends and
``server`` for the fork server that gives every job a fresh process cheaply.
"""

from opencwm.sandbox.client import Outcome, Sandbox, SandboxConfig, SandboxError
from opencwm.sandbox.isolation import BACKENDS, SandboxUnavailable, detect_backend
from opencwm.sandbox.server import CRASH, EXCEPTION, KILLED, MEMORY, OK, STATUSES, TIMEOUT

__all__ = [
    "BACKENDS",
    "CRASH",
    "EXCEPTION",
    "KILLED",
    "MEMORY",
    "OK",
    "STATUSES",
    "TIMEOUT",
    "Outcome",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxUnavailable",
    "detect_backend",
]

"""The one sandbox for untrusted code: tracing, test validation, agent commands and evaluation all run through it.

Guarantees: no network; only what a job needs visible, read-only; a fresh, size-limited writable area per job;
no capabilities and a seccomp filter inside; a wall-time limit, a memory limit on the job's whole process tree and
a capped process count; the whole process tree killed at the end of every job; a job cannot reach the fork server
or speak for another job; and a status for every outcome (``ok``, ``exception``, ``timeout``, ``memory``,
``disk``, ``crash``, ``killed``). See ``isolation`` for the backends and layers, ``confine`` for the last step
inside, ``seccomp`` for the filter, ``cgroup`` for the limits, ``server`` for the fork server that gives every job a
fresh process cheaply, and ``check`` for the probes that prove each guarantee on this machine.
"""

from opencwm.sandbox.client import Outcome, Sandbox, SandboxConfig, SandboxError
from opencwm.sandbox.isolation import BACKENDS, LAYERS, SandboxUnavailable, detect_backend
from opencwm.sandbox.server import CRASH, DISK, EXCEPTION, KILLED, MEMORY, OK, STATUSES, TIMEOUT

__all__ = [
    "BACKENDS",
    "CRASH",
    "DISK",
    "EXCEPTION",
    "KILLED",
    "LAYERS",
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

"""Host side of the sandbox: start a fork server inside the isolation backend, send it jobs, survive its death.

    with Sandbox(SandboxConfig(timeout=5, memory_mb=1024)) as box:
        outcome = box.run("opencwm.trace.jobs:trace_item", item={...})
        outcome.status   # ok | exception | timeout | memory | crash | killed

A job that kills the server (or the whole sandbox) gets status ``killed``; the next job starts a new server.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import opencwm
from opencwm.sandbox.isolation import ProcessCap, detect_backend, launch_command, stop_process
from opencwm.sandbox.server import KILLED, OK

PACKAGE_ROOT = str(Path(opencwm.__file__).resolve().parent.parent)
SERVER_FILE = str(Path(__file__).with_name("server.py"))


@dataclass
class SandboxConfig:
    backend: str = "auto"  # auto | bwrap | unshare | rlimits
    timeout: float = 10.0  # seconds per job
    memory_mb: int = 2048  # address-space limit per job
    max_processes: int = 128  # per sandbox (fork bombs stop here)
    python: str = sys.executable  # the interpreter inside the sandbox (any CPython >= 3.11)
    preload: tuple[str, ...] = ()  # modules the server imports once, before forking jobs
    env: dict[str, str] = field(default_factory=dict)
    visible_paths: tuple[str, ...] = ()  # host paths the jobs read (e.g. a repository); always read-only
    scratch: str | None = None  # the one writable directory (default: a fresh temporary one, removed on close)


@dataclass
class Outcome:
    status: str
    result: object = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == OK


class SandboxError(RuntimeError):
    """The sandbox could not be started at all."""


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.backend = detect_backend(self.config.backend)
        self._own_scratch = self.config.scratch is None
        self.scratch = Path(tempfile.mkdtemp(prefix="opencwm-sandbox-") if self._own_scratch
                            else self.config.scratch).resolve()
        self._process: subprocess.Popen | None = None
        self._cap: ProcessCap | None = None
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.scratch),
            "TMPDIR": str(self.scratch),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": PACKAGE_ROOT,
            "OPENCWM_SANDBOX_PIDNS": "1" if self.backend in ("bwrap", "unshare") else "0",
            "OPENCWM_SANDBOX_PRELOAD": ",".join(self.config.preload),
        }
        env.update(self.config.env)
        return env

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close_process()
        # By path, so that an interpreter without opencwm installed (a repository's venv) runs it too.
        argv = [self.config.python, "-s", SERVER_FILE]
        self._cap = ProcessCap(self.config.max_processes)
        env = self._environment()
        if self._cap.path is not None:
            env["OPENCWM_SANDBOX_CGROUP_PROCS"] = str(self._cap.path / "cgroup.procs")
        interpreter_prefix = str(Path(self.config.python).absolute().parent.parent)  # a venv or an installation
        visible = (PACKAGE_ROOT, interpreter_prefix, *map(str, self.config.visible_paths))
        command = launch_command(self.backend, argv, self.scratch, env, visible)
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                preexec_fn=self._cap.enter, cwd=self.scratch,
            )
        except OSError as exc:
            raise SandboxError(f"could not start the {self.backend} sandbox: {exc}") from None
        line = self._read_line(60.0)
        if line is None or not json.loads(line).get("ready"):
            self.close_process()
            raise SandboxError(f"the {self.backend} sandbox's fork server did not start ({self.config.python})")

    def close_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._cap)
        elif self._cap is not None:
            self._cap.close()
        self._cap = None

    def close(self) -> None:
        self.close_process()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------------------------------
    def run(self, fn: str, *, timeout: float | None = None, **kwargs) -> Outcome:
        """Run ``fn(**kwargs)`` (``fn`` is ``"module:function"``, importable inside the sandbox; kwargs and the
        result are JSON) in a fresh process inside the sandbox."""
        self.start()
        timeout = self.config.timeout if timeout is None else timeout
        request = {"fn": fn, "kwargs": kwargs, "timeout": timeout, "memory_mb": self.config.memory_mb}
        start = time.monotonic()
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            # The server enforces the timeout itself; this margin only catches a server that stopped answering.
            line = self._read_line(timeout + 30.0)
        except (BrokenPipeError, OSError):
            line = None
        if line is None:
            self.close_process()
            self.restarts += 1
            return Outcome(KILLED, error="the sandbox died while running the job (it was restarted)",
                           seconds=time.monotonic() - start)
        reply = json.loads(line)
        return Outcome(reply["status"], reply.get("result"), reply.get("error"), reply.get("seconds", 0.0))

    def _read_line(self, timeout: float) -> bytes | None:
        stream = self._process.stdout
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            return None
        line = stream.readline()
        return line or None

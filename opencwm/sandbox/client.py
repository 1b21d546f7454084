"""Host side of the sandbox: start a fork server inside the isolation backend, send it jobs, survive its death.

    with Sandbox(SandboxConfig(timeout=5, memory_mb=1024)) as box:
        outcome = box.run("opencwm.trace.jobs:trace_program_job", source="def f(x): return x", call="f(1)")
        outcome.status   # ok | exception | timeout | memory | disk | crash | killed

A job that kills the server (or the whole sandbox) gets status ``killed``; the next job starts a new server.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.sandbox.cgroup import Cgroup
from opencwm.sandbox.isolation import (
    LAYERS,
    PACKAGE_ROOT,
    SHM,
    WRITABLE_AREA,
    Launch,
    Layout,
    detect_backend,
    process_cap,
    stop_process,
)
from opencwm.sandbox.orphans import sweep
from opencwm.sandbox.server import KILLED, MEMORY, OK, STATUSES

SERVER_FILE = str(Path(__file__).with_name("server.py"))
SCRATCH_PREFIX = "opencwm-sandbox-"
REPLY_MARGIN = 10.0  # seconds past a job's time limit before a silent server counts as dead
_MiB = 1024 * 1024


@dataclass
class SandboxConfig:
    backend: str = "auto"  # auto | bwrap | unshare | rlimits
    timeout: float = 10.0  # seconds per job
    memory_mb: int = 2048  # per job: its whole process tree (cgroup) and each of its processes (address space)
    max_processes: int = 128  # per sandbox (fork bombs stop here)
    disk_mb: int = 256  # per job: the writable area (a tmpfs: /tmp, also HOME and TMPDIR), and any one file
    disk_inodes: int = 16_384  # per job: files and directories in the writable area
    python: str = sys.executable  # the interpreter inside the sandbox (any CPython >= 3.11)
    preload: tuple[str, ...] = ()  # modules the server imports once, before forking jobs
    env: dict[str, str] = field(default_factory=dict)
    visible_paths: tuple[str, ...] = ()  # host paths the jobs read (e.g. a repository); always read-only
    writable_paths: tuple[str, ...] = ()  # host directories the jobs may write, kept from job to job (a work tree)
    protected_paths: tuple[str, ...] = ()  # paths inside writable ones that stay read-only (a work tree's .git)
    cwd: str | None = None  # the jobs' working directory (default: the writable area)
    layers: tuple[str, ...] = LAYERS  # defence layers in force (see opencwm.sandbox.isolation); tests weaken it


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
        self.scratch: Path | None = None
        if self.backend == "rlimits":  # no tmpfs without namespaces: a host directory stands in for it
            sweep(Path(tempfile.gettempdir()), SCRATCH_PREFIX)
            self.scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")).resolve()
        c = self.config
        self.layout = Layout(
            python=c.python, visible=tuple(map(str, c.visible_paths)), writable=tuple(map(str, c.writable_paths)),
            protected=tuple(map(str, c.protected_paths)), cwd=c.cwd, disk_bytes=c.disk_mb * _MiB,
            disk_inodes=c.disk_inodes, layers=tuple(c.layers), scratch=str(self.scratch) if self.scratch else None)
        self._process: subprocess.Popen | None = None
        self._cgroup: Cgroup | None = None
        self._launch: Launch | None = None
        self._stderr = None  # the backend's messages (a temporary file)
        self._oom_kills = 0  # the group's out-of-memory kills seen so far
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        home = self.layout.home
        layers = self.config.layers
        areas = [str(self.scratch)] if self.scratch else ([WRITABLE_AREA, SHM] if "tmpfs" in layers else [])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": PACKAGE_ROOT,
            "OPENCWM_SANDBOX_PIDNS": "0" if self.backend == "rlimits" else "1",
            "OPENCWM_SANDBOX_PRELOAD": ",".join(self.config.preload),
            "OPENCWM_SANDBOX_AREAS": ":".join(areas),
            "OPENCWM_SANDBOX_NONDUMPABLE": "1" if "nondumpable" in layers else "0",
        }
        env.update(self.config.env)
        return env

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close_process()
        # By path, so that an interpreter without opencwm installed (a repository's venv) runs it too.
        argv = [self.config.python, "-s", SERVER_FILE]
        self._cgroup = Cgroup(process_cap(self.backend, self.config.max_processes))
        env = self._environment()
        if self.backend == "rlimits" and "pids" in self._cgroup.groups:
            env["OPENCWM_SANDBOX_CGROUP_PROCS"] = str(self._cgroup.groups["pids"] / "cgroup.procs")
        launch = self._launch = Launch.prepare(self.backend, argv, self.layout, env)
        # What the backend (bwrap, confine, runsc) says goes to a file: read for a start that fails, never a pipe
        # that could fill up or break under a runtime that logs later.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process, in close_process)
        try:
            self._process = subprocess.Popen(
                launch.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                preexec_fn=self._cgroup.enter, cwd="/", env=launch.env, pass_fds=launch.pass_fds,
            )
        except OSError as exc:
            self.close_process()
            raise SandboxError(f"could not start the {self.backend} sandbox: {exc}") from None
        finally:
            launch.close()
        line = self._read_line(60.0)
        try:
            ready = line is not None and json.loads(line).get("ready")
        except (ValueError, AttributeError):
            ready = False
        if not ready:
            why = self._startup_error()
            self.close_process()
            raise SandboxError(f"the {self.backend} sandbox's fork server did not start ({self.config.python})"
                               + (f": {why}" if why else ""))
        if "cgroup" in self.config.layers:  # the job's budget, above what the warm server itself holds; files
            # in the tmpfs writable areas are memory too, and have their own limit
            files = self.layout.disk_bytes + self.layout.shm_bytes if self.scratch is None else 0
            self._cgroup.limit_memory(self._cgroup.memory_usage() + self.config.memory_mb * _MiB + files)
        self._oom_kills = self._cgroup.oom_kills()

    def _startup_error(self) -> str:
        try:
            self._process.wait(timeout=5)
            self._stderr.seek(0)
            text = self._stderr.read(1 << 16).decode("utf-8", "replace").strip()
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return ""
        return text.splitlines()[-1][:300] if text else ""

    def close_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._cgroup)
        elif self._cgroup is not None:
            self._cgroup.close()
        self._cgroup = None
        launch, self._launch = self._launch, None
        if launch is not None:
            launch.release()
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()

    def close(self) -> None:
        self.close_process()
        if self.scratch is not None:
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
        request_id = secrets.token_hex(8)  # unguessable: a job that reaches the protocol cannot answer for the next
        request = {"id": request_id, "fn": fn, "kwargs": kwargs, "timeout": timeout,
                   "memory_mb": self.config.memory_mb}
        oom_before = self._oom_kills
        start = time.monotonic()
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            # The server enforces the timeout itself (and sweeps what is left within 5 s); this margin only
            # catches a server that stopped answering (a job may stop or kill it).
            line = self._read_line(timeout + REPLY_MARGIN)
        except (BrokenPipeError, OSError):
            line = None
        seconds = time.monotonic() - start
        reply = _parse_reply(line, request_id)
        self._oom_kills = self._cgroup.oom_kills()
        if self._oom_kills > oom_before:  # a process of the job's tree was killed for want of memory
            error = (f"the job's processes used more than {self.config.memory_mb} MB together (files in its "
                     f"writable area included) and were killed"
                     + ("" if reply is not None else " with the sandbox (it was restarted)"))
            if reply is None:
                self._restart()
            return Outcome(MEMORY, error=error, seconds=seconds)
        if reply is None:
            self._restart()
            why = "died while running the job" if line is None else "answered out of turn"
            return Outcome(KILLED, error=f"the sandbox {why} (it was restarted)", seconds=seconds)
        return Outcome(reply["status"], reply.get("result"), reply.get("error"), reply.get("seconds", seconds))

    def _restart(self) -> None:
        self.close_process()
        self.restarts += 1

    def _read_line(self, timeout: float) -> bytes | None:
        stream = self._process.stdout
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            return None
        line = stream.readline()
        return line or None


def _parse_reply(line: bytes | None, request_id: str) -> dict | None:
    """The server's reply to request ``request_id``, checked; None for a missing or foreign one."""
    if line is None:
        return None
    try:
        reply = json.loads(line)
    except ValueError:
        return None
    if not isinstance(reply, dict) or reply.get("id") != request_id or reply.get("status") not in STATUSES:
        return None
    if not isinstance(reply.get("error"), (str, type(None))) or not isinstance(reply.get("seconds", 0.0),
                                                                               (int, float)):
        return None
    return reply

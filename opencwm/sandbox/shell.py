"""Shell commands in the sandbox: one-shot commands (test runs) and a persistent bash session (the agent's ``bash``
tool), with one writable directory, no network, a wall-time limit per command and the whole process tree killed
when it runs out.

The isolation is the same as the fork server's (``opencwm.sandbox.isolation``): only what a job needs is visible,
``root`` is the one host directory it may write (paths in ``protected``, such as a work tree's ``.git``, stay
read-only inside it), ``/tmp`` is a size-limited tmpfs of its own, no capabilities, the seccomp filter, and a
cgroup that caps processes (and memory, when given). Only what runs inside differs.

    with Shell(root, cwd="repo", env={"PATH": ...}) as shell:
        result = shell.run("cd src && ls", timeout=30)
        result.status, result.returncode, result.output   # ok | timeout | killed
"""

from __future__ import annotations

import base64
import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from opencwm.sandbox import workspace
from opencwm.sandbox.cgroup import Cgroup
from opencwm.sandbox.isolation import (
    LAYERS,
    WRITABLE_AREA,
    Launch,
    Layout,
    detect_backend,
    process_cap,
    stop_process,
)
from opencwm.sandbox.server import DISK, KILLED, MEMORY, OK, TIMEOUT

DEFAULT_MAX_OUTPUT = 16_000


@dataclass
class CommandResult:
    status: str  # ok (finished, whatever its exit code) | timeout | killed (the shell died) | disk (its /tmp or
    # the writable directory is full) | memory (a process of the command was killed by the memory limit)
    returncode: int | None
    output: str  # stdout and stderr together, truncated in the middle with a visible marker
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == OK and self.returncode == 0


def truncate_output(text: str, limit: int = DEFAULT_MAX_OUTPUT) -> str:
    """Keep the head and the tail of a long output, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters truncated] ...\n{text[-half:]}"


def _layout(backend: str, root: Path, cwd: Path, visible: tuple[str, ...], protected: tuple[str, ...],
            disk_mb: int) -> Layout:
    return Layout(visible=tuple(map(str, visible)), writable=(str(root),), protected=tuple(map(str, protected)),
                  cwd=str(cwd), disk_bytes=disk_mb * 1024 * 1024, layers=LAYERS,
                  scratch=str(root) if backend == "rlimits" else None)


def _base_env(layout: Layout, env: dict[str, str] | None) -> dict[str, str]:
    merged = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": layout.home, "TMPDIR": layout.home,
              "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "GIT_PAGER": "cat",
              "PAGER": "cat", "TERM": "dumb"}
    merged.update(env or {})
    return merged


def _prepare(backend: str, argv: list[str], layout: Layout, env: dict[str, str], max_processes: int,
             memory_mb: int | None) -> tuple[Launch, Cgroup]:
    cgroup = Cgroup(process_cap(backend, max_processes), memory_mb * 1024 * 1024 if memory_mb else None)
    return Launch.prepare(backend, argv, layout, env), cgroup


def _drain_and_stop(process: subprocess.Popen, cgroup: Cgroup) -> bytes:
    """Kill a timed-out command's process group and cgroup, keeping what it printed so far."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    cgroup.kill_all()
    return process.communicate()[0]


def run_command(argv: list[str], root: str | Path, *, cwd: str | Path | None = None, timeout: float = 600,
                env: dict[str, str] | None = None, backend: str = "auto", visible: tuple[str, ...] = (),
                protected: tuple[str, ...] = (), max_processes: int = 512, memory_mb: int | None = None,
                disk_mb: int = 1024, max_output: int | None = DEFAULT_MAX_OUTPUT) -> CommandResult:
    """Run ``argv`` in the sandbox with ``root`` as its only writable host directory, in ``cwd`` (default
    ``root``)."""
    backend = detect_backend(backend)
    root = Path(root).resolve()
    cwd = Path(cwd).resolve() if cwd else root
    layout = _layout(backend, root, cwd, visible, protected, disk_mb)
    launch, cgroup = _prepare(backend, argv, layout, _base_env(layout, env), max_processes, memory_mb)
    start = time.monotonic()
    try:
        process = subprocess.Popen(launch.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, preexec_fn=cgroup.enter, start_new_session=True,
                                   cwd="/", env=launch.env, pass_fds=launch.pass_fds)
    except BaseException:
        cgroup.close()
        launch.release()
        raise
    finally:
        launch.close()
    try:
        output, _ = process.communicate(timeout=timeout)
        status, code = DISK if workspace.full(root) else OK, process.returncode
    except subprocess.TimeoutExpired:
        output = _drain_and_stop(process, cgroup)
        status, code = TIMEOUT, None
    finally:
        cgroup.close()
        launch.release()
    text = output.decode("utf-8", "replace")
    return CommandResult(status, code, truncate_output(text, max_output) if max_output else text,
                         round(time.monotonic() - start, 3))


def _full(counts: bytes) -> bool:
    """Whether ``stat -f -c %a:%d:%c`` (free blocks, free files, total files) says the area is full."""
    try:
        blocks, files, total = (int(x) for x in counts.split(b":"))
    except ValueError:
        return False
    return blocks == 0 or (total > 0 and files == 0)


class Shell:
    """A persistent, non-interactive bash session in the sandbox: state (directory, variables) carries over from
    one command to the next. A command that runs past its timeout kills the session's whole process tree; the next
    command gets a fresh session in the starting directory."""

    def __init__(self, root: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 backend: str = "auto", visible: tuple[str, ...] = (), protected: tuple[str, ...] = (),
                 max_processes: int = 256, memory_mb: int | None = None, disk_mb: int = 1024,
                 max_output: int = DEFAULT_MAX_OUTPUT):
        self.backend = detect_backend(backend)
        self.root = Path(root).resolve()
        self.cwd = Path(cwd).resolve() if cwd else self.root
        self.layout = _layout(self.backend, self.root, self.cwd, visible, protected, disk_mb)
        self.env = _base_env(self.layout, env)
        self.max_processes, self.memory_mb, self.disk_mb = max_processes, memory_mb, disk_mb
        self.max_output = max_output
        self._process: subprocess.Popen | None = None
        self._cgroup: Cgroup | None = None
        self._launch: Launch | None = None
        self._oom_before = 0
        self.restarts = 0

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close()
        launch, self._cgroup = _prepare(self.backend, ["bash", "--noprofile", "--norc"], self.layout, self.env,
                                        self.max_processes, self.memory_mb)
        self._launch = launch
        try:
            self._process = subprocess.Popen(launch.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, preexec_fn=self._cgroup.enter,
                                             start_new_session=True, cwd="/", env=launch.env,
                                             pass_fds=launch.pass_fds)
        finally:
            launch.close()

    def run(self, command: str, timeout: float = 120) -> CommandResult:
        self.start()
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        marker = f"__opencwm_done_{uuid.uuid4().hex}__"
        encoded = base64.b64encode(command.encode()).decode()
        # the command never reads the session's stdin (which carries the next commands)
        # after the exit code: free blocks, free and total files of the private /tmp (no blocks or no files left:
        # the command filled it; a total of 0 files means no file limit, as in gVisor)
        line = (f'{{ eval "$(printf %s {encoded} | base64 -d)"; }} < /dev/null 2>&1; '
                f"printf '\\n{marker} %s %s\\n' $? \"$(/usr/bin/stat -f -c %a:%d:%c {WRITABLE_AREA} 2>/dev/null)\"\n")
        start = time.monotonic()
        self._oom_before = self._cgroup.oom_kills() if self._cgroup else 0
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
        except OSError:
            return self._died(start, b"")
        buffer = b""
        fd = self._process.stdout.fileno()
        needle = f"\n{marker} ".encode()
        while True:
            index = buffer.find(needle)
            if index >= 0 and buffer.endswith(b"\n"):
                fields = buffer[index + len(needle):].split()
                full = self.backend != "rlimits" and len(fields) > 1 and _full(fields[1])
                full = full or workspace.full(self.root)
                return self._result(DISK if full else OK, int(fields[0]), buffer[:index], start)
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                self.close()
                self.restarts += 1
                return self._result(TIMEOUT, None, buffer, start)
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return self._died(start, buffer)
                buffer += chunk

    def _died(self, start: float, buffer: bytes) -> CommandResult:
        oom = self._cgroup is not None and self._cgroup.oom_kills() > self._oom_before
        self.close()
        self.restarts += 1
        return self._result(MEMORY if oom else KILLED, None, buffer, start)

    def _result(self, status: str, code: int | None, output: bytes, start: float) -> CommandResult:
        if status != TIMEOUT and self._cgroup is not None and self._cgroup.oom_kills() > self._oom_before:
            status = MEMORY  # (under gVisor the kernel's choice may be the whole sandbox: the shell died)
        text = truncate_output(output.decode("utf-8", "replace"), self.max_output)
        return CommandResult(status, code, text, round(time.monotonic() - start, 3))

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._cgroup, group=True)
        elif self._cgroup is not None:
            self._cgroup.close()
        self._cgroup = None
        launch, self._launch = self._launch, None
        if launch is not None:
            launch.release()

    def __enter__(self) -> Shell:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Shell commands in the sandbox: one-shot commands (test runs) and a persistent bash session (the agent's ``bash``
tool), with one writable directory, no network, a wall-time limit per command and the whole process tree killed
when it runs out.

The isolation is the same as the fork server's (``opencwm.sandbox.isolation``); only what runs inside differs.

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

from opencwm.sandbox.isolation import ProcessCap, detect_backend, launch_command, stop_process

OK, TIMEOUT, KILLED = "ok", "timeout", "killed"
DEFAULT_MAX_OUTPUT = 16_000


@dataclass
class CommandResult:
    status: str  # ok (finished, whatever its exit code) | timeout | killed (the shell died)
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


def _base_env(root: Path, backend: str, env: dict[str, str] | None) -> dict[str, str]:
    home = "/tmp" if backend == "bwrap" else str(root)  # bwrap gives a private, writable /tmp
    merged = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
              "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "GIT_PAGER": "cat", "PAGER": "cat",
              "TERM": "dumb"}
    merged.update(env or {})
    return merged


def _in_directory(cwd: Path, argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]


def _drain_and_stop(process: subprocess.Popen, cap: ProcessCap) -> bytes:
    """Kill a timed-out command's process group and cgroup, keeping what it printed so far."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    cap.close()
    return process.communicate()[0]


def run_command(argv: list[str], root: str | Path, *, cwd: str | Path | None = None, timeout: float = 600,
                env: dict[str, str] | None = None, backend: str = "auto", visible: tuple[str, ...] = (),
                max_processes: int = 512, max_output: int | None = DEFAULT_MAX_OUTPUT) -> CommandResult:
    """Run ``argv`` in the sandbox with ``root`` as its only writable directory, in ``cwd`` (default ``root``)."""
    backend = detect_backend(backend)
    root = Path(root).resolve()
    cwd = Path(cwd).resolve() if cwd else root
    cap = ProcessCap(max_processes)
    command = launch_command(backend, _in_directory(cwd, argv), root, _base_env(root, backend, env), visible)
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=cap.enter, start_new_session=True, cwd=root)
    try:
        output, _ = process.communicate(timeout=timeout)
        status, code = OK, process.returncode
    except subprocess.TimeoutExpired:
        output = _drain_and_stop(process, cap)
        status, code = TIMEOUT, None
    finally:
        cap.close()
    text = output.decode("utf-8", "replace")
    return CommandResult(status, code, truncate_output(text, max_output) if max_output else text,
                         round(time.monotonic() - start, 3))


class Shell:
    """A persistent, non-interactive bash session in the sandbox: state (directory, variables) carries over from
    one command to the next. A command that runs past its timeout kills the session's whole process tree; the next
    command gets a fresh session in the starting directory."""

    def __init__(self, root: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 backend: str = "auto", visible: tuple[str, ...] = (), max_processes: int = 256,
                 max_output: int = DEFAULT_MAX_OUTPUT):
        self.backend = detect_backend(backend)
        self.root = Path(root).resolve()
        self.cwd = Path(cwd).resolve() if cwd else self.root
        self.env, self.visible = _base_env(self.root, self.backend, env), visible
        self.max_processes, self.max_output = max_processes, max_output
        self._process: subprocess.Popen | None = None
        self._cap: ProcessCap | None = None
        self.restarts = 0

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close()
        self._cap = ProcessCap(self.max_processes)
        argv = _in_directory(self.cwd, ["bash", "--noprofile", "--norc"])
        command = launch_command(self.backend, argv, self.root, self.env, self.visible)
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, preexec_fn=self._cap.enter,
                                         start_new_session=True, cwd=self.root)

    def run(self, command: str, timeout: float = 120) -> CommandResult:
        self.start()
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        marker = f"__opencwm_done_{uuid.uuid4().hex}__"
        encoded = base64.b64encode(command.encode()).decode()
        # the command never reads the session's stdin (which carries the next commands)
        line = (f'{{ eval "$(printf %s {encoded} | base64 -d)"; }} < /dev/null 2>&1; '
                f"printf '\\n{marker} %s\\n' $?\n")
        start = time.monotonic()
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
                code = int(buffer[index + len(needle):].split()[0])
                return self._result(OK, code, buffer[:index], start)
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
        self.close()
        self.restarts += 1
        return self._result(KILLED, None, buffer, start)

    def _result(self, status: str, code: int | None, output: bytes, start: float) -> CommandResult:
        text = truncate_output(output.decode("utf-8", "replace"), self.max_output)
        return CommandResult(status, code, text, round(time.monotonic() - start, 3))

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._cap, group=True)
        elif self._cap is not None:
            self._cap.close()
        self._cap = None

    def __enter__(self) -> Shell:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

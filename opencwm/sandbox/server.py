"""The fork server: one long-lived Python process inside the sandbox that runs each job in a fresh forked child.

Forking a warm interpreter (modules already imported) costs about a millisecond, against ~100 ms for starting a
new interpreter, so every item still gets a fresh process. Protocol with the host: one JSON object per line on
the server's original stdin/stdout, which it moves to private descriptors; untrusted children never see them.

Request: ``{"fn": "module:function", "kwargs": {...}, "timeout": s, "memory_mb": m, "preload": [...]}``.
Reply: ``{"status": ..., "result": ..., "error": ..., "seconds": ...}`` where status is one of ``ok``,
``exception``, ``timeout``, ``memory``, ``crash``, ``killed``. Only JSON crosses the boundary (never pickle), so a
hostile job cannot make the host run code.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

OK, EXCEPTION, TIMEOUT, MEMORY, CRASH, KILLED = "ok", "exception", "timeout", "memory", "crash", "killed"
STATUSES = (OK, EXCEPTION, TIMEOUT, MEMORY, CRASH, KILLED)
_MAX_REPLY = 256 * 1024 * 1024


def _resolve(name: str):
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _child(request: dict, write_fd: int, protocol_fds: tuple[int, ...]) -> None:
    """Runs in the forked child: limits, isolation of descriptors, the job, the reply. Never returns."""
    try:
        os.setsid()
        for fd in protocol_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        memory = request.get("memory_mb")
        if memory:
            limit = int(memory) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        fn = _resolve(request["fn"])
        try:
            reply = {"status": OK, "result": fn(**request.get("kwargs", {}))}
        except MemoryError:
            reply = {"status": MEMORY, "error": "the job ran out of memory (MemoryError)"}
        except BaseException as exc:
            tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            reply = {"status": EXCEPTION, "error": tail[:2000]}
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError) as exc:
            data = json.dumps({"status": EXCEPTION, "error": f"the job's result is not JSON: {exc}"}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    except MemoryError:
        os.write(write_fd, b'{"status": "memory", "error": "the job ran out of memory (MemoryError)"}')
    finally:
        os._exit(0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _sweep(list_others) -> None:
    """Kill every process ``list_others()`` names until none is left (5 s at most), reaping those that were
    reparented to us."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        others = list_others()
        if not others:
            return
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
        time.sleep(0.005)


def _namespace_others() -> list[int]:
    """In a private PID namespace, every process but the namespace's init and this server is a leftover of a job
    (e.g. a daemonised grandchild or a fork bomb)."""
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _cgroup_others(procs_file: str) -> list[int]:
    """Without a PID namespace, the sandbox's cgroup still knows every process it holds."""
    try:
        with open(procs_file) as handle:
            return [int(p) for p in handle.read().split() if int(p) != os.getpid()]
    except OSError:
        return []


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_job(request: dict, protocol_fds: tuple[int, ...], own_namespace: bool, cgroup_procs: str = "") -> dict:
    timeout = float(request.get("timeout") or 3600)
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(request, write_fd, protocol_fds)
    os.close(write_fd)
    # Read the reply until EOF or until the job's process has exited (processes it left behind may hold the pipe
    # open; they are killed below and must not turn a finished job into a timeout).
    chunks: list[bytes] = []
    size = 0
    timed_out = False
    wait_status = None
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], min(remaining, 0.05))
        if ready:
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_REPLY:
                break
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            wait_status = status
            os.set_blocking(read_fd, False)
            try:
                while chunk := os.read(read_fd, 1 << 20):
                    chunks.append(chunk)
                    size += len(chunk)
            except BlockingIOError:
                pass
            break
    os.close(read_fd)
    if timed_out:
        _kill_group(pid)
    if wait_status is None:
        _, wait_status = os.waitpid(pid, 0)
    _kill_group(pid)  # leftovers that stayed in the job's process group
    if own_namespace:
        _sweep(_namespace_others)
    elif cgroup_procs:
        _sweep(lambda: _cgroup_others(cgroup_procs))
    else:
        _reap()
    seconds = time.monotonic() - start
    if timed_out:
        return {"status": TIMEOUT, "error": f"the job ran past its {timeout:g} s limit and was killed",
                "seconds": seconds}
    if chunks and size <= _MAX_REPLY:
        try:
            reply = json.loads(b"".join(chunks))
            if isinstance(reply, dict) and reply.get("status") in STATUSES:
                reply["seconds"] = seconds
                return reply
        except ValueError:
            pass
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        status = KILLED if signum == signal.SIGKILL else CRASH
        return {"status": status, "error": f"the job's process died from signal {name}", "seconds": seconds}
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    return {"status": CRASH, "error": f"the job's process exited with code {code} without a result",
            "seconds": seconds}


def main() -> None:
    # Keep the protocol on private descriptors; 0/1 become /dev/null so stray prints cannot corrupt it.
    protocol_in, protocol_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    own_namespace = os.environ.get("OPENCWM_SANDBOX_PIDNS") == "1"
    cgroup_procs = os.environ.get("OPENCWM_SANDBOX_CGROUP_PROCS", "")
    for name in filter(None, os.environ.get("OPENCWM_SANDBOX_PRELOAD", "").split(",")):
        importlib.import_module(name)  # warm imports, shared by every forked job
    reader = os.fdopen(protocol_in, "rb")
    writer = os.fdopen(protocol_out, "wb")
    writer.write(b'{"ready": true}\n')
    writer.flush()
    for line in reader:
        try:
            request = json.loads(line)
        except ValueError:
            reply = {"status": CRASH, "error": "malformed request"}
        else:
            reply = run_job(request, (protocol_in, protocol_out), own_namespace, cgroup_procs)
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # started by path: the sandbox package's own modules must not shadow a job's imports
    sys.exit(main())

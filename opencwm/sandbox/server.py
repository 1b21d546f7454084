"""The fork server: one long-lived Python process inside the sandbox that runs each job in a fresh forked child.

Forking a warm interpreter (modules already imported) costs about a millisecond, against ~100 ms for starting a
new interpreter, so every item still gets a fresh process. Protocol with the host: one JSON object per line on
the server's original stdin/stdout, which it moves to private descriptors; untrusted children never see them.

Request: ``{"id": "<random>", "fn": "module:function", "kwargs": {...}, "timeout": s, "memory_mb": m}``.
Reply: ``{"id": "<the request's>", "status": ..., "result": ..., "error": ..., "seconds": ...}`` where status is one
of ``ok``, ``exception``, ``timeout``, ``memory``, ``disk``, ``crash``, ``killed``. Only JSON crosses the boundary
(never pickle), so a hostile job cannot make the host run code.

A job cannot speak for another: it writes its result on a pipe of its own, which the server reads and wraps in a
reply carrying the request's random id (the host checks it, and a job cannot guess the next one); the server is not
dumpable, so a job (same uid, no capabilities, no ``ptrace``) can open neither its memory nor its descriptors under
``/proc`` (under gVisor it can: the random ids still hold there). After every job, each
process the job left is killed and the writable areas are emptied, so the next job starts from a fresh state.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import traceback

OK, EXCEPTION, TIMEOUT, MEMORY, DISK, CRASH, KILLED = "ok", "exception", "timeout", "memory", "disk", "crash", "killed"
STATUSES = (OK, EXCEPTION, TIMEOUT, MEMORY, DISK, CRASH, KILLED)
_MAX_REPLY = 256 * 1024 * 1024
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PR_SET_DUMPABLE = 4


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
        try:  # when memory runs short, the kernel kills the job's processes before the server
            with open("/proc/self/oom_score_adj", "w") as handle:
                handle.write("1000")
        except OSError:
            pass
        memory = request.get("memory_mb")
        if memory:
            limit = int(memory) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file past the size limit is an error (EFBIG), not a kill
        fn = _resolve(request["fn"])
        try:
            reply = {"status": OK, "result": fn(**request.get("kwargs", {}))}
        except MemoryError:
            reply = {"status": MEMORY, "error": "the job ran out of memory (MemoryError)"}
        except OSError as exc:
            status = DISK if exc.errno in _DISK_ERRORS else EXCEPTION
            reply = {"status": status, "error": traceback.format_exception_only(type(exc), exc)[-1].strip()[:2000]}
        except RecursionError as exc:
            reply = {"status": EXCEPTION, "error": f"RecursionError: {exc}"}
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


class Areas:
    """The writable areas (tmpfs) emptied after every job; mount points inside them (host paths shown to the jobs)
    and the directories leading to them stay."""

    def __init__(self, paths: list[str]):
        self.paths = [p for p in paths if os.path.isdir(p)]
        self.keep: set[str] = set()
        try:
            with open("/proc/self/mountinfo") as handle:
                points = [line.split()[4] for line in handle]
        except OSError:
            points = []
        for point in points:
            for area in self.paths:
                if point.startswith(area.rstrip("/") + "/"):
                    while point != area:
                        self.keep.add(point)
                        point = os.path.dirname(point)

    def full(self) -> str | None:
        """A one-line reason when an area has no space or no file left, else None."""
        for area in self.paths:
            try:
                info = os.statvfs(area)
            except OSError:
                continue
            if info.f_blocks and info.f_bavail == 0:
                return f"the writable area {area} is full ({info.f_blocks * info.f_frsize // 1024**2} MB)"
            if info.f_files and info.f_favail == 0:
                return f"the writable area {area} has no file left ({info.f_files} files)"
        return None

    def wipe(self) -> None:
        for area in self.paths:
            self._clear(area)

    def _clear(self, directory: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            path = entry.path
            if path in self.keep:
                if not os.path.ismount(path):
                    self._clear(path)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, **_RMTREE_HANDLER)
                else:
                    os.unlink(path)
            except OSError:
                pass


def _writable_and_retry(function, path, _exc) -> None:
    """rmtree's error handler: a job may have taken the permissions off its directories."""
    parent = os.path.dirname(path)
    os.chmod(parent, stat.S_IRWXU)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
    function(path)


_RMTREE_HANDLER = {"onexc" if sys.version_info >= (3, 12) else "onerror": _writable_and_retry}


def run_job(request: dict, protocol_fds: tuple[int, ...], own_namespace: bool, cgroup_procs: str = "",
            areas: Areas | None = None) -> dict:
    reply = _run_job(request, protocol_fds, own_namespace, cgroup_procs)
    if areas is not None:
        full = areas.full()
        if full and reply["status"] in (OK, EXCEPTION, CRASH):
            reply.update(status=DISK, error=full)
            reply.pop("result", None)
        areas.wipe()
    return reply


def _run_job(request: dict, protocol_fds: tuple[int, ...], own_namespace: bool, cgroup_procs: str = "") -> dict:
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


def _not_dumpable() -> None:
    """Out of reach of its jobs: no ptrace attach, no /proc/PID/mem or /proc/PID/fd for processes without
    CAP_SYS_PTRACE (jobs have none), for this process and every job forked from it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def main() -> None:
    # Keep the protocol on private descriptors; 0/1 become /dev/null so stray prints cannot corrupt it.
    protocol_in, protocol_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if os.environ.get("OPENCWM_SANDBOX_NONDUMPABLE") == "1":
        _not_dumpable()
    own_namespace = os.environ.get("OPENCWM_SANDBOX_PIDNS") == "1"
    cgroup_procs = os.environ.get("OPENCWM_SANDBOX_CGROUP_PROCS", "")
    areas = Areas(list(filter(None, os.environ.get("OPENCWM_SANDBOX_AREAS", "").split(":"))))
    for name in filter(None, os.environ.get("OPENCWM_SANDBOX_PRELOAD", "").split(",")):
        importlib.import_module(name)  # warm imports, shared by every forked job
    areas.wipe()  # what the preloads wrote (caches): every job starts from the same empty area
    reader = os.fdopen(protocol_in, "rb")
    writer = os.fdopen(protocol_out, "wb")
    writer.write(b'{"ready": true}\n')
    writer.flush()
    os.dup2(devnull, 2)  # from now on nothing reaches the host but replies
    for line in reader:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            reply = {"status": CRASH, "error": "malformed request"}
        else:
            reply = run_job(request, (protocol_in, protocol_out), own_namespace, cgroup_procs, areas)
            reply["id"] = request.get("id")
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # started by path: the sandbox package's own modules must not shadow a job's imports
    sys.exit(main())

"""How a sandbox is isolated from the host: backend detection, the launch command, and a process-count cap.

Backends, in order of preference:

- ``bwrap`` (bubblewrap): new network, PID, IPC, UTS and mount namespaces; the host filesystem read-only, a private
  ``/tmp`` and ``/dev``, and one writable scratch directory.
- ``unshare``: new network, PID and mount namespaces (util-linux); the root filesystem is remounted read-only
  inside, except for the scratch directory (``TMPDIR`` points there).
- ``rlimits``: no namespaces at all, only resource limits. Isolation is weak (network and the filesystem are
  reachable) and a loud warning says so.

Whatever the backend, a process-count cap (cgroup ``pids.max`` when this user may create cgroups, else
``RLIMIT_NPROC`` for non-root users) contains fork bombs, and each job runs under ``RLIMIT_AS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

BACKENDS = ("bwrap", "unshare", "rlimits")
_probe_cache: dict[str, bool] = {}


class SandboxUnavailable(RuntimeError):
    """The requested isolation backend cannot run on this machine."""


def _probe(backend: str) -> bool:
    """Whether ``backend`` actually works here (tools can be installed yet forbidden, e.g. in containers)."""
    if backend not in _probe_cache:
        if backend == "rlimits":
            ok = True
        else:
            try:
                command = launch_command(backend, ["/bin/true"], Path("/tmp"), {})
                ok = subprocess.run(command, capture_output=True, timeout=20).returncode == 0
            except (OSError, subprocess.SubprocessError, SandboxUnavailable):
                ok = False
        _probe_cache[backend] = ok
    return _probe_cache[backend]


def detect_backend(preferred: str | None = None) -> str:
    """The best working backend, or ``preferred`` if given (raising if it does not work here)."""
    if preferred and preferred != "auto":
        if preferred not in BACKENDS:
            raise SandboxUnavailable(f"unknown sandbox backend {preferred!r} (choose from {', '.join(BACKENDS)})")
        if not _probe(preferred):
            raise SandboxUnavailable(f"the {preferred} sandbox backend does not work on this machine")
        if preferred == "rlimits":
            warn_weak_isolation()
        return preferred
    for backend in BACKENDS:
        if _probe(backend):
            if backend == "rlimits":
                warn_weak_isolation()
            return backend
    raise SandboxUnavailable("no sandbox backend works here")  # unreachable: rlimits always works


def warn_weak_isolation() -> None:
    message = (
        "opencwm sandbox: using rlimits only (no bubblewrap or unshare). "
        "Untrusted code can reach the network and write files the current user may write. "
        "Install bubblewrap (apt-get install bubblewrap) for real isolation."
    )
    print(f"WARNING: {message}", file=sys.stderr)


def launch_command(backend: str, argv: list[str], scratch: Path, env: dict[str, str],
                   visible: tuple[str, ...] = ()) -> list[str]:
    """The host command that starts ``argv`` inside the sandbox with ``scratch`` as its only writable directory.
    ``visible`` paths are guaranteed readable inside (bubblewrap hides the host's /tmp behind a private one)."""
    scratch = str(scratch)
    if backend == "bwrap":
        exe = shutil.which("bwrap")
        if exe is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
        command = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for path in visible:
            command += ["--ro-bind-try", path, path]
        command += ["--bind", scratch, scratch, "--chdir", scratch]
        command += ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        for key, value in env.items():
            command += ["--setenv", key, value]
        return [*command, "--", *argv]
    if backend == "unshare":
        exe = shutil.which("unshare")
        if exe is None:
            raise SandboxUnavailable("unshare (util-linux) is not installed")
        user = [] if os.geteuid() == 0 else ["--map-root-user"]
        # Inside the new mount namespace: keep scratch writable (a mount of its own), make the rest read-only.
        setup = (
            'set -e; mount --make-rprivate /; mount --bind "$0" "$0";'
            'mount -o remount,bind,ro /; cd "$0"; exec env -i "$@"'
        )
        exports = [f"{key}={value}" for key, value in env.items()]
        return [exe, *user, "--net", "--pid", "--fork", "--mount-proc", "--mount", "--kill-child", "--",
                "/bin/sh", "-c", setup, scratch, *exports, *argv]
    if backend == "rlimits":
        return ["/usr/bin/env", "-i", *[f"{key}={value}" for key, value in env.items()], *argv]
    raise SandboxUnavailable(f"unknown sandbox backend {backend!r}")


class ProcessCap:
    """A cgroup that caps how many processes a sandbox may hold (fork bombs hit the cap, not the host)."""

    ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))

    def __init__(self, max_processes: int):
        self.max_processes = max_processes
        self.path: Path | None = None
        for root in self.ROOTS:
            v1 = root.name == "pids" and (root / "cgroup.procs").exists()
            if v1 or self._v2_has_pids(root):
                path = root / f"opencwm-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    path.mkdir()
                    (path / "pids.max").write_text(str(max_processes))
                except OSError:
                    try:
                        path.rmdir()
                    except OSError:
                        pass
                    continue
                self.path = path
                break

    @staticmethod
    def _v2_has_pids(root: Path) -> bool:
        try:
            return "pids" in (root / "cgroup.subtree_control").read_text().split()
        except OSError:
            return False

    def enter(self) -> None:
        """Called in the sandbox's first process before exec: move it (and so all its descendants) in."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text("0")
        elif os.geteuid() != 0:
            import resource

            resource.setrlimit(resource.RLIMIT_NPROC, (self.max_processes + _user_process_count(),) * 2)

    def close(self) -> None:
        if self.path is None:
            return
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
            self.path.rmdir()
        except OSError:
            pass
        self.path = None


def stop_process(process, cap: ProcessCap | None, *, group: bool = False) -> None:
    """Close a sandbox process's pipes and kill it (its whole process group too when it leads one, ``group``),
    then every process left in its cgroup, and wait for it."""
    import signal

    for stream in (process.stdin, process.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    if group:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()
    if cap is not None:
        cap.close()


def _user_process_count() -> int:
    uid = os.geteuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count

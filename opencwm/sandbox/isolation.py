"""How a sandbox is isolated from the host: backend detection, what a job can see, and the launch command.

Backends, in order of preference:

- ``bwrap`` (bubblewrap): new user, network, PID, IPC, UTS, cgroup and mount namespaces; a root holding only
  what a job needs, read-only.
- ``unshare`` (util-linux): the same namespaces, with the root built by ``confine`` (same contents).
- ``rlimits``: no namespaces at all. The network and the host's files are reachable; a loud warning says so.

What a job sees (``Layout``): the system's programs and libraries (``/usr`` and its links), a short list of
``/etc`` files (users, name service, dynamic linker, certificates; never ``shadow``), the interpreter's
installation (a venv and the Python it was made from), the ``opencwm`` package, the paths the caller shows
(read-only) or hands over (writable), ``/proc`` of its own PID namespace and a minimal ``/dev``. Not ``/root``,
``/home``, the rest of ``/etc`` or anything else of the host. Its writable area is a fresh tmpfs with a byte and
an inode limit (``/tmp``, also ``HOME`` and ``TMPDIR``; ``/dev/shm``).

Inside, before the workload starts, ``confine`` mounts those tmpfs, drops every capability (uid 0 of the user
namespace keeps none, and secure bits stop it regaining them), sets ``no_new_privs`` and loads the seccomp filter
(``opencwm.sandbox.seccomp``). Each of these is a layer that ``layers`` can turn off, for tests and for
``opencwm sandbox check`` to show what each one holds.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import opencwm

BACKENDS = ("bwrap", "unshare", "rlimits", "gvisor")
AUTO = ("bwrap", "unshare", "rlimits")  # what "auto" tries, in order; gVisor only when asked (slow to start, fork)
# Defence in depth, each switchable: capabilities dropped, seccomp filter, only the needed paths mounted, the
# whole tree's memory in a cgroup, a size-limited tmpfs as the writable area, the fork server's memory and
# descriptors out of its jobs' reach.
LAYERS = ("capabilities", "seccomp", "mounts", "cgroup", "tmpfs", "nondumpable")
PACKAGE_DIR = str(Path(opencwm.__file__).resolve().parent)
PACKAGE_ROOT = str(Path(PACKAGE_DIR).parent)
CONFINE_FILE = str(Path(__file__).with_name("confine.py"))
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "localtime", "timezone", "ld.so.cache",
             "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates", "mime.types", "os-release",
             "debian_version", "protocols", "services", "locale.alias", "inputrc", "magic", "magic.mime")
WRITABLE_AREA = "/tmp"
SHM = "/dev/shm"
_probe_cache: dict[str, bool] = {}


class SandboxUnavailable(RuntimeError):
    """The requested isolation backend cannot run on this machine."""


@functools.lru_cache(maxsize=16)
def installation(python: str) -> tuple[str, ...]:
    """The directories an interpreter needs: its venv, the installation the venv was made from, its real path."""
    paths = {str(Path(python).absolute().parent.parent), str(Path(os.path.realpath(python)).parent.parent)}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        code = ("import json, sys; "
                "print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))")
        try:
            result = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
            prefixes = json.loads(result.stdout) if result.returncode == 0 else []
        except (OSError, ValueError, subprocess.SubprocessError):
            prefixes = []
    paths.update(str(Path(p).resolve()) for p in prefixes)
    paths.update(prefixes)
    return tuple(sorted(p for p in paths if p and p != "/"))


@dataclass
class Layout:
    """What the sandbox shows a job and where it may write."""

    python: str = sys.executable  # the workload's interpreter (its installation is shown read-only)
    visible: tuple[str, ...] = ()  # host paths shown read-only
    writable: tuple[str, ...] = ()  # host directories the job may write (e.g. a work tree)
    protected: tuple[str, ...] = ()  # paths inside writable ones that stay read-only (e.g. a work tree's .git)
    cwd: str | None = None  # default: the writable area
    disk_bytes: int = 256 * 1024**2  # the tmpfs writable area's size...
    disk_inodes: int = 16_384  # ... and its number of files and directories
    layers: tuple[str, ...] = LAYERS
    scratch: str | None = None  # rlimits only: the host directory that stands in for the tmpfs

    def read_only_binds(self) -> list[str]:
        paths = [*installation(self.python), *installation(sys.executable), PACKAGE_DIR, *self.visible]
        return _outermost(str(Path(p).absolute()) for p in paths)

    def system(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(directories and /etc files bound read-only, (target, link) symlinks) of the system itself."""
        binds, links = [], []
        for name in SYSTEM_DIRS:
            path = Path("/") / name
            if path.is_symlink():
                links.append((os.readlink(path), str(path)))
            elif path.is_dir():
                binds.append(str(path))
        if "mounts" in self.layers:
            binds += [f"/etc/{name}" for name in ETC_FILES if os.path.lexists(f"/etc/{name}")]
        else:  # the weakened layout: all of /etc and the home directories, as the sandbox once showed them
            binds += [p for p in ("/etc", "/root", "/home") if os.path.isdir(p)]
        return binds, links

    @property
    def shm_bytes(self) -> int:
        return min(self.disk_bytes, 64 * 1024**2)

    @property
    def home(self) -> str:
        """The job's HOME, TMPDIR and default working directory: its writable area."""
        return self.scratch if self.scratch else WRITABLE_AREA


def _outermost(paths) -> list[str]:
    """The paths without those inside another one of them (binding the outer one shows them already)."""
    chosen: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == c or path.startswith(c.rstrip("/") + "/") for c in chosen):
            chosen.append(path)
    return sorted(chosen)


def _probe(backend: str) -> bool:
    """Whether ``backend`` actually works here (tools can be installed yet forbidden, e.g. in containers)."""
    if backend not in _probe_cache:
        if backend == "rlimits":
            ok = True
        else:
            launch = None
            try:
                launch = Launch.prepare(backend, ["/bin/true"], Layout(layers=()), {"PATH": "/usr/bin:/bin"})
                ok = subprocess.run(launch.command, capture_output=True, timeout=20, env=launch.env,
                                    pass_fds=launch.pass_fds).returncode == 0
            except (OSError, subprocess.SubprocessError, SandboxUnavailable):
                ok = False
            finally:
                if launch is not None:
                    launch.release()
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
    for backend in AUTO:
        if _probe(backend):
            if backend == "rlimits":
                warn_weak_isolation()
            return backend
    raise SandboxUnavailable("no sandbox backend works here")  # unreachable: rlimits always works


def process_cap(backend: str, max_processes: int) -> int:
    """The cgroup's task limit for a sandbox that lets its jobs have ``max_processes``."""
    if backend == "gvisor":
        from opencwm.sandbox.gvisor import RUNTIME_TASKS

        return max_processes + RUNTIME_TASKS
    return max_processes


def warn_weak_isolation() -> None:
    message = (
        "opencwm sandbox: using rlimits only (no bubblewrap or unshare). "
        "Untrusted code can reach the network and write files the current user may write. "
        "Install bubblewrap (apt-get install bubblewrap) for real isolation."
    )
    print(f"WARNING: {message}", file=sys.stderr)


@dataclass
class Launch:
    """A prepared sandbox start: the host command, its environment, and descriptors it inherits."""

    command: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    spec: dict = field(default_factory=dict)
    workdir: Path | None = None  # what the start made on the host (gVisor's bundle), removed by release()

    def release(self) -> None:
        """After the sandbox's process has ended: remove what its start made on the host."""
        self.close()
        if self.workdir is not None:
            from opencwm.sandbox.gvisor import release

            release(self.workdir)
            self.workdir = None

    def close(self) -> None:
        for fd in self.pass_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.pass_fds = ()

    @classmethod
    def prepare(cls, backend: str, argv: list[str], layout: Layout, env: dict[str, str]) -> Launch:
        """The command that runs ``argv`` inside the ``backend`` sandbox laid out as ``layout``."""
        if backend not in BACKENDS:
            raise SandboxUnavailable(f"unknown sandbox backend {backend!r}")
        layers = set(layout.layers)
        spec: dict = {"drop_capabilities": "capabilities" in layers, "no_new_privs": True,
                      "file_size": layout.disk_bytes, "cwd": layout.cwd or layout.home}
        if backend in ("bwrap", "unshare", "gvisor"):  # (never rlimits: confine runs in the host's mounts there)
            size = layout.disk_bytes if "tmpfs" in layers else 1 << 40
            inodes = layout.disk_inodes if "tmpfs" in layers else 1 << 24
            spec["tmpfs"] = [{"path": WRITABLE_AREA, "bytes": size, "inodes": inodes},
                             {"path": SHM, "bytes": min(size, layout.shm_bytes), "inodes": min(inodes, 1024)}]
        confine = [sys.executable, "-I", "-S", CONFINE_FILE]
        if backend == "gvisor":  # the OCI runtime makes the mounts and drops capabilities; confine loads seccomp
            from opencwm.sandbox.gvisor import bundle, runsc

            if runsc() is None:
                raise SandboxUnavailable("gVisor (runsc) is not installed (apt-get install runsc)")
            spec["drop_capabilities"] = False
            command, workdir = bundle(layout, spec, confine, argv, env, spec.pop("tmpfs"), "seccomp" in layers)
            return cls(command, env, (), spec, workdir)
        pass_fds: tuple[int, ...] = ()
        if "seccomp" in layers:
            from opencwm.sandbox.seccomp import SeccompUnavailable, program_fd

            try:
                fd = program_fd()
            except SeccompUnavailable as exc:
                raise SandboxUnavailable(str(exc)) from None
            os.set_inheritable(fd, True)
            spec["seccomp_fd"], pass_fds = fd, (fd,)
        if backend == "rlimits":
            command = []
            spec["drop_capabilities"] = spec["drop_capabilities"] and os.geteuid() == 0
        else:
            spec["protect_proc"] = True
            spec["rebind"] = [[p, True] for p in layout.writable] + [
                [p, False] for p in (*layout.read_only_binds(), *layout.protected)]
            command = _bwrap(layout, spec) if backend == "bwrap" else _unshare(layout, spec)
        return cls([*command, *confine, json.dumps(spec), "--", *argv], env, pass_fds, spec)


def _bwrap(layout: Layout, spec: dict) -> list[str]:
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    command = [exe, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
               # confine needs these two to mount the writable tmpfs and drop the rest; it drops them too
               "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"]
    binds, links = layout.system()
    for path in binds:
        command += ["--ro-bind", path, path]
    for target, path in links:
        command += ["--symlink", target, path]
    command += ["--proc", "/proc", "--dev", "/dev"]
    if os.geteuid() == 0:
        command += ["--dir", WRITABLE_AREA]  # confine mounts the tmpfs, with its byte and inode limits
    else:
        # Run by a user, bubblewrap hands the job a user namespace that does not own its mount namespace, so
        # confine cannot mount there: bubblewrap's own tmpfs, limited in bytes only (the check reports the
        # missing inode limit), and its own read-only /proc/sys.
        tmpfs = {area["path"]: area for area in spec.pop("tmpfs", [])}
        spec["protect_proc"] = False
        for path in (WRITABLE_AREA, SHM):
            if path in tmpfs:
                command += ["--size", str(tmpfs[path]["bytes"]), "--perms", "1777", "--tmpfs", path]
            else:
                command += ["--dir", path]
    for path in layout.read_only_binds():
        command += ["--ro-bind-try", path, path]
    for path in layout.writable:
        command += ["--bind", path, path]
    for path in layout.protected:
        command += ["--ro-bind-try", path, path]
    if "mounts" in layout.layers:
        command += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return command


def _unshare(layout: Layout, spec: dict) -> list[str]:
    exe = shutil.which("unshare")
    if exe is None:
        raise SandboxUnavailable("unshare (util-linux) is not installed")
    binds, links = layout.system()
    spec["root"] = {
        "mount_point": WRITABLE_AREA,  # this mount namespace's own tmpfs goes there: the host's /tmp is untouched
        "binds": [[p, p, False] for p in [*binds, *layout.read_only_binds()]]
                 + [[p, p, True] for p in layout.writable] + [[p, p, False] for p in layout.protected],
        "symlinks": [*links, ["/proc/self/fd", "/dev/fd"], ["/proc/self/fd/0", "/dev/stdin"],
                     ["/proc/self/fd/1", "/dev/stdout"], ["/proc/self/fd/2", "/dev/stderr"]],
    }
    if "mounts" in layout.layers:
        spec["read_only"] = ["/"]
    return [exe, "--map-root-user", "--user", "--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "--cgroup",
            "--kill-child", "--"]


def stop_process(process, cgroup=None, *, group: bool = False) -> None:
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
    if cgroup is not None:
        cgroup.close()

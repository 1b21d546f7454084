"""The ``gvisor`` backend: the same layout run by gVisor's ``runsc`` (a user-space kernel: the job's system calls
are served by gVisor, not the host's kernel), for work where a command's cost dwarfs the sandbox's -- agent
episodes and RL. Starting one takes about a second and a fork inside it tens of milliseconds (see
``benchmarks/trace_overhead.py``), against a few milliseconds under bubblewrap; so it is never chosen by ``auto``.

The sandbox is an OCI bundle made per start (``opencwm-gvisor-<pid>-<random>`` in the temporary directory, removed
on release, swept after a ``kill -9``): an empty read-only root with the layout's read-only and writable binds, no
capabilities, ``no_new_privs``, no network (``--network=none``), its own PID, IPC, UTS and mount namespaces.
``runsc`` itself starts in a mount namespace of its own on the host (``confine.host_view``) where every path the
job is shown read-only is read-only in the host's kernel as well -- runsc 2024-07 truncates a read-only bound file
that a job opens with ``O_TRUNC`` before it answers EROFS, and the check found it -- and where each writable area
(``/tmp``, ``/dev/shm``) is a tmpfs of the host's kernel with a byte and an inode limit, bound in (gVisor's own
tmpfs ignores ``nr_inodes``). ``confine`` still runs first inside (the seccomp filter, read from a bound file:
runsc hands the container no other descriptor; the file size limit). gVisor's ``/proc`` lets a job open the fork
server's descriptors although the server is not dumpable (the random reply ids still stop forgery);
``opencwm sandbox check --sandbox gvisor`` reports it. The memory cgroup is opencwm's own (runsc runs with
``--ignore-cgroups`` inside it), so the whole sandbox counts, gVisor's kernel included. Debian 12's own runsc
(2022-12) answers ``statx`` with EINVAL, so coreutils' ``ls`` and ``stat`` fail inside; ``make`` installs the 2024
one from bookworm-backports, where they work (an agent's shell needs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from opencwm.sandbox.orphans import sweep
from opencwm.sandbox.seccomp import filter_program

PREFIX = "opencwm-gvisor-"
RUNTIME_TASKS = 512  # runsc's own threads (Go) count in the sandbox's pids cgroup, beside the job's processes
SECCOMP_DIR = "/.opencwm"  # bound read-only: a directory (this runsc fails to bind single files it did not see)
SECCOMP_PATH = f"{SECCOMP_DIR}/seccomp.bpf"


def runsc() -> str | None:
    return shutil.which("runsc")


def _mount_point(rootfs: Path, target: str, directory: bool) -> None:
    """Make the mount point in the (empty) root before runsc starts: it is read-only once running."""
    path = rootfs / target.lstrip("/")
    if directory:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)


def bundle(layout, spec: dict, confine: list[str], argv: list[str], env: dict[str, str], tmpfs: list[dict],
           seccomp: bool) -> tuple[list[str], Path]:
    """(the runsc command, the bundle directory) for ``argv`` in ``layout``, started by ``confine`` with ``spec``
    (the ``seccomp`` filter loaded from a bound file)."""
    exe = runsc()
    if exe is None:
        raise FileNotFoundError("runsc")  # (isolation checks first and says so in its own words)
    sweep(Path(tempfile.gettempdir()), PREFIX, _release_directory)
    workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    mounts: list[dict] = [{"destination": "/proc", "type": "proc", "source": "proc"}]
    view: dict = {"binds": [], "areas": []}  # runsc's own mount namespace on the host (confine.host_view)

    def bind(source: str, target: str, writable: bool) -> None:
        if not os.path.exists(source):
            return
        under_area = any(target.startswith(area["path"].rstrip("/") + "/") for area in tmpfs)
        if not under_area:
            _mount_point(rootfs, target, os.path.isdir(source))
        mounts.append({"destination": target, "type": "bind", "source": source,
                       "options": ["rbind", "rw" if writable else "ro", "nosuid", "nodev"]})
        view["binds"].append([source, writable])

    binds, links = layout.system()
    for target, link in links:
        (rootfs / link.lstrip("/")).symlink_to(target)
    for path in binds:
        bind(path, path, False)
    for index, area in enumerate(tmpfs):  # before the binds that may lie below them
        source = workdir / f"area-{index}"  # a tmpfs of the host's kernel there, in runsc's namespace only
        source.mkdir()
        view["areas"].append({"source": str(source), "bytes": area["bytes"], "inodes": area["inodes"]})
        _mount_point(rootfs, area["path"], True)
        mounts.append({"destination": area["path"], "type": "bind", "source": str(source),
                       "options": ["rbind", "rw", "nosuid", "nodev"]})
    for path in layout.read_only_binds():
        bind(path, path, False)
    for path in layout.writable:
        bind(path, path, True)
    for path in layout.protected:
        bind(path, path, False)
    if seccomp:  # runsc passes the container no descriptor but stdio: a bound file instead
        (workdir / "seccomp").mkdir()
        (workdir / "seccomp" / "seccomp.bpf").write_bytes(filter_program())
        bind(str(workdir / "seccomp"), SECCOMP_DIR, False)
        spec["seccomp_path"] = SECCOMP_PATH
    capabilities = {name: [] for name in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    config = {
        "ociVersion": "1.0.0",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": [*confine, json.dumps(spec), "--", *argv],
                    "env": [f"{key}={value}" for key, value in env.items()], "cwd": "/",
                    "capabilities": capabilities, "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")]},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    container = f"opencwm-{uuid.uuid4().hex[:12]}"
    (workdir / "container").write_text(container)
    command = [exe, "--root", str(workdir / "state"), "--network=none", "--platform=ptrace", "--ignore-cgroups",
               "run", "--bundle", str(workdir), container]
    host_side = {"host_view": view, "drop_capabilities": False, "no_new_privs": False}
    return [*confine, json.dumps(host_side), "--", *command], workdir


def _release_directory(workdir: Path) -> bool:
    """Delete the container (if runsc still knows it) and the bundle."""
    exe = runsc()
    try:
        container = (workdir / "container").read_text().strip()
    except OSError:
        container = ""
    if exe and container and (workdir / "state").exists():
        subprocess.run([exe, "--root", str(workdir / "state"), "delete", "-force", container],
                       capture_output=True, timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)
    return not workdir.exists()


def release(workdir: Path | None) -> None:
    if workdir is not None:
        _release_directory(workdir)

"""The last step into the sandbox, run inside it (``python -I -S confine.py SPEC -- ARGV``): build the root
(``unshare`` backend only; bubblewrap builds its own), mount the size-limited writable areas, then give up every
privilege and exec the workload.

In order: (0) for the ``gvisor`` backend only, run on the host before ``runsc`` (``host_view``): a mount
namespace where what the container reads is read-only in the host's kernel and its writable areas are tmpfs with
limits; (1) for the ``unshare`` backend, a new root on a tmpfs holding only the listed read-only and writable
binds, a fresh ``/proc`` (its ``sys``, ``sysrq-trigger``, ``irq`` and ``bus`` read-only) and a minimal ``/dev``,
entered with ``pivot_root``; (2) a tmpfs with a byte and an inode limit at each writable area (``/tmp``,
``/dev/shm``), host paths that were bound under it bound again on top; (3) the root made read-only; (4) secure
bits that stop uid 0 from regaining capabilities at ``execve``, every capability dropped from the bounding,
ambient, inheritable, permitted and effective sets; (5) ``no_new_privs``; (6) the seccomp filter (a BPF program
read from an inherited descriptor, see ``opencwm.sandbox.seccomp``); (7) ``RLIMIT_FSIZE`` and the working
directory; (8) ``execve``. A step that fails ends the process with a one-line message and status 125, before
anything untrusted runs.

Standard library only (``ctypes`` for the system calls), so any CPython 3.11+ runs it, a repository's venv
included.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
CLONE_NEWNS = 0x20000
PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 22, 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
# noroot, no_setuid_fixup, keep_caps off -- each with its lock bit
SECURE_BITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
CAPABILITY_VERSION_3 = 0x20080522
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


class ConfineError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise ConfineError(f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda s: None if s is None else os.fsencode(s)
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {target}")


def _bind(fd: int, target: str, writable: bool, device: bool = False) -> None:
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if device else MS_NODEV) | (0 if writable else MS_RDONLY)
    _mount(None, target, None, flags)


def _mount_point(path: str, directory: bool) -> None:
    if directory:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _open_sources(binds: list) -> list[tuple[int, str, bool, bool]]:
    """(descriptor, target, writable, is a directory) of each bind whose source exists."""
    opened = []
    for source, target, writable in binds:
        try:
            fd = os.open(source, os.O_PATH)
        except OSError:
            continue  # like bubblewrap's --ro-bind-try: an optional path that is not here
        opened.append((fd, target, writable, os.path.isdir(f"/proc/self/fd/{fd}")))
    return opened


def build_root(spec: dict) -> None:
    """The ``unshare`` backend's root: a tmpfs with only what the job needs, entered with pivot_root."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    binds = _open_sources(spec["binds"])
    devices = _open_sources([[f"/dev/{name}", f"/dev/{name}", True] for name in DEVICES])
    new_root = spec["mount_point"]  # an existing directory; only this mount namespace sees what is put there
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for fd, target, writable, directory in binds:
        _mount_point(new_root + target, directory)
        _bind(fd, new_root + target, writable)
        os.close(fd)
    for fd, target, writable, directory in devices:
        _mount_point(new_root + target, directory)
        _bind(fd, new_root + target, writable, device=True)
        os.close(fd)
    for target, path in spec.get("symlinks", []):
        os.symlink(target, new_root + path)
    _mount_point(new_root + "/proc", True)
    _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in ("/tmp", "/dev/shm", "/.old"):
        _mount_point(new_root + path, True)
    os.chdir(new_root)
    _check(_libc.syscall(155 if os.uname().machine == "x86_64" else 41, b".", b".old"), "pivot_root")
    os.chroot(".")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount /.old")
    os.rmdir("/.old")


def _mounts_at_or_below(path: str) -> list[str]:
    """The mount points of this mount namespace at ``path`` or below it."""
    below = path.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])  # (\040: a space)
            if point == path or point.startswith(below):
                points.append(point)
    return points


def host_view(view: dict) -> None:
    """The gVisor backend's host side, run as root before ``runsc``: a mount namespace of runsc's own in which
    every path the container is shown read-only is read-only in the host's kernel too (so no fault of runsc's can
    write it: the 2024 release truncates a read-only bound file a job opens with ``O_TRUNC``), and each writable
    area is a tmpfs of the host's kernel with a byte and an inode limit (gVisor's own tmpfs ignores
    ``nr_inodes``). ``view``: ``binds`` ([path, writable] in mount order), ``areas`` ({source, bytes, inodes})."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for area in view.get("areas", []):
        _mount("tmpfs", area["source"], "tmpfs", MS_NOSUID | MS_NODEV,
               f"mode=1777,size={int(area['bytes'])},nr_inodes={int(area['inodes'])}")
    for path, writable in view.get("binds", []):
        if not os.path.lexists(path):
            continue
        _mount(path, path, None, MS_BIND | MS_REC)
        for point in _mounts_at_or_below(path):
            kept = os.statvfs(point).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # (ST_* equal MS_* there)
            _mount(None, point, None, MS_REMOUNT | MS_BIND | kept | (0 if writable else MS_RDONLY))


def protect_proc() -> None:
    """Kernel settings read-only: uid 0 of the sandbox may be the host's root, for whom ``/proc/sys`` is
    otherwise writable without any capability (``kernel.core_pattern`` would run a program on the host)."""
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path) and not os.statvfs(path).f_flag & os.ST_RDONLY:  # (bubblewrap run by a user
            _mount(path, path, None, MS_BIND | MS_REC)  # makes them read-only itself; run by root, it does not)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def writable_areas(spec: dict) -> None:
    """A fresh tmpfs with a byte and an inode limit at each writable area; host paths bound below one are bound
    again on top of it."""
    for area in spec.get("tmpfs", []):
        path = area["path"]
        below = [b for b in spec.get("rebind", []) if b[0].startswith(path.rstrip("/") + "/")]
        held = _open_sources([[p, p, writable] for p, writable in below])
        os.makedirs(path, exist_ok=True)
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV,
               f"mode=1777,size={int(area['bytes'])},nr_inodes={int(area['inodes'])}")
        for fd, target, writable, directory in held:
            _mount_point(target, directory)
            _bind(fd, target, writable)
            os.close(fd)


def drop_privileges() -> None:
    _check(_libc.prctl(PR_SET_SECUREBITS, SECURE_BITS, 0, 0, 0), "securebits")
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last = int(handle.read())
    for cap in range(last + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels without ambient sets

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    _check(_libc.capset(ctypes.byref(Header(CAPABILITY_VERSION_3, 0)), (Data * 2)()), "capset")


def no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def load_seccomp(fd: int) -> None:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    program = b"".join(chunks)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(Program(len(program) // 8, program)), 0, 0),
           "seccomp")


def confine(spec: dict) -> None:
    if spec.get("host_view"):
        host_view(spec["host_view"])
    if spec.get("root"):
        build_root(spec["root"])
    if spec.get("protect_proc"):
        protect_proc()
    writable_areas(spec)
    for path in spec.get("read_only", []):  # the root's own tmpfs (bubblewrap leaves it writable)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in spec.get("dirs", []):
        os.makedirs(path, exist_ok=True)
    if spec.get("drop_capabilities", True):
        drop_privileges()
    if spec.get("no_new_privs", True):
        no_new_privs()
    if spec.get("seccomp_fd") is not None:
        load_seccomp(int(spec["seccomp_fd"]))
    elif spec.get("seccomp_path"):  # gVisor: the program as a file bound read-only
        load_seccomp(os.open(spec["seccomp_path"], os.O_RDONLY))
    if spec.get("file_size"):
        limit = int(spec["file_size"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    os.chdir(spec.get("cwd") or "/")


def main() -> None:
    spec = json.loads(sys.argv[1])
    argv = sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:]
    try:
        confine(spec)
    except (ConfineError, OSError) as exc:
        print(f"opencwm sandbox: could not confine the sandbox: {exc}", file=sys.stderr)
        os._exit(125)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"opencwm sandbox: cannot run {argv[0]}: {exc}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    main()

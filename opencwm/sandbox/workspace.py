"""Host directories that sandboxed code writes and the host keeps (a forager work tree), with a limit on bytes and
on files: run as root, each is a tmpfs of its own mounted on the host (``size`` and ``nr_inodes``), so a job that
fills it gets ``ENOSPC`` there and the host's disk is never touched; its size is set to what the host put in it
plus the allowance once the host has filled it (``fit``). Where mounting is not allowed (an unprivileged user, a
container without the right) it is a plain directory and only the sandbox's per-file limit (``RLIMIT_FSIZE``)
holds; ``create`` says which.

    limited = create(path)                                   # the directory, empty (limits: HEADROOM)
    ...                                                      # the host fills it (a git checkout)
    fit(path, bytes=1 << 30, inodes=65_536)                  # what is there + the allowance
    full(path)                                               # no byte or no file left there
    remove(path)                                             # unmounted and deleted (also for sweep)
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from opencwm.sandbox.confine import MNT_DETACH, MS_NODEV, MS_NOSUID, MS_REMOUNT, _libc

HEADROOM = 4 << 30, 1 << 20  # bytes, files: the limits while the host fills the directory


def _mount_tmpfs(path: Path, size: int, inodes: int, remount: bool = False) -> bool:
    flags = MS_NOSUID | MS_NODEV | (MS_REMOUNT if remount else 0)
    options = f"mode=0755,size={int(size)},nr_inodes={int(inodes)}".encode()
    return _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", ctypes.c_ulong(flags), options) == 0


def create(path: str | Path) -> bool:
    """Make the directory ``path`` (its parent must exist); True when it has limits of its own (a tmpfs, with
    ``HEADROOM`` until ``fit``)."""
    path = Path(path)
    path.mkdir()
    return os.geteuid() == 0 and _mount_tmpfs(path, *HEADROOM)


def limited(path: str | Path) -> bool:
    """Whether ``path`` is a directory with limits of its own (a mount point)."""
    return os.path.ismount(path)


def fit(path: str | Path, *, bytes: int, inodes: int) -> None:
    """Limit a directory made by ``create`` to what it holds now plus ``bytes`` and ``inodes``."""
    if not limited(path):
        return
    stats = os.statvfs(path)
    used_bytes = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    used_files = stats.f_files - stats.f_ffree
    if not _mount_tmpfs(Path(path), used_bytes + bytes, used_files + inodes, remount=True):
        raise OSError(ctypes.get_errno(), f"cannot limit {path}: {os.strerror(ctypes.get_errno())}")


def full(path: str | Path) -> bool:
    """Whether the file system holding ``path`` (a limited directory's own) has no byte or no file left."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail == 0 or (stats.f_files > 0 and stats.f_favail == 0)


def remove(path: str | Path) -> bool:
    """Unmount (if limited) and delete ``path``; whether it is gone."""
    path = Path(path)
    if limited(path):
        _libc.umount2(str(path).encode(), MNT_DETACH)  # (the files go with the tmpfs)
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()

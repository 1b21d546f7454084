"""Leftovers of killed processes: what a process names after itself (a sandbox's cgroups, the rlimits backend's
scratch directories, forager work trees) is removed by the next process that makes one, once the owner is gone.
A clean close removes its own; this is for ``kill -9``."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_name(prefix: str) -> str:
    """A unique name that says which process owns it: ``<prefix><pid>-<random>``."""
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _remove_tree(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def sweep(parent: Path, prefix: str, remove: Callable[[Path], bool] = _remove_tree) -> int:
    """Remove (with ``remove``) the entries of ``parent`` named by ``owned_name(prefix)`` whose owner is gone; how
    many were removed."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    removed = 0
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not process_alive(int(match.group(1))) and remove(entry):
            removed += 1
    return removed

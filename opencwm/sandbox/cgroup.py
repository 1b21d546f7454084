"""A control group per sandbox: caps its process count (``pids.max``) and the memory of its whole process tree
(``memory.max``, no swap), counts the out-of-memory kills that tell a ``memory`` outcome from other deaths, and
is removed with every process in it when the sandbox closes.

Both cgroup versions: v2 (one hierarchy with the ``pids`` and ``memory`` controllers) and v1 (a ``pids`` and a
``memory`` hierarchy). The group is made below this process's own group in each hierarchy, named
``opencwm-<owner pid>-<random>``; groups whose owner process is gone (a host killed with ``kill -9``) are swept
when the next one is made. Where this user may not make groups (no delegation), there is no cgroup: the process
count falls back to ``RLIMIT_NPROC`` for non-root users, the memory limit to the per-process ``RLIMIT_AS``, and
``opencwm sandbox check`` says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from opencwm.sandbox.orphans import owned_name, sweep

ROOT = Path("/sys/fs/cgroup")
PREFIX = "opencwm-"


def _own_group(controller: str) -> tuple[Path, bool] | None:
    """(directory of this process's group for ``controller``, whether it is cgroup v2), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = ROOT / controller
            if (base / "cgroup.procs").exists():
                return base / path.lstrip("/"), False
    for line in lines:
        if line.startswith("0::"):
            group = ROOT / line[3:].lstrip("/")
            try:
                enabled = (group / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            if controller in enabled:
                return group, True
    return None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove(group: Path, wait: float = 2.0) -> bool:
    """Kill every process in ``group`` and remove it (a group can be removed only once its processes are gone)."""
    deadline = time.monotonic() + wait
    while True:
        for pid in _procs(group):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            group.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def sweep_stale(parent: Path) -> int:
    """Remove the opencwm groups in ``parent`` whose owner process is gone; how many were removed."""
    return sweep(parent, PREFIX, _remove)


class Cgroup:
    """The sandbox's group(s): one per hierarchy that has a controller we use."""

    def __init__(self, max_processes: int, memory_bytes: int | None = None):
        self.max_processes = max_processes
        self.groups: dict[str, Path] = {}  # controller -> group directory (one directory for both on v2)
        self.version: int | None = None
        name = owned_name(PREFIX)
        for controller in ("pids", "memory"):
            found = _own_group(controller)
            if found is None:
                continue
            parent, v2 = found
            existing = next((g for g in self.groups.values() if g.parent == parent), None)
            if existing is not None:
                self.groups[controller] = existing
                continue
            sweep_stale(parent)
            group = parent / name
            try:
                group.mkdir()
            except OSError:
                continue
            self.groups[controller] = group
            self.version = 2 if v2 else 1
        if "pids" in self.groups and not _write(self.groups["pids"] / "pids.max", str(max_processes)):
            self._drop("pids")
        if memory_bytes is not None:
            self.limit_memory(memory_bytes)

    def _drop(self, controller: str) -> None:
        group = self.groups.pop(controller)
        if group not in self.groups.values():
            _remove(group)

    @property
    def caps_processes(self) -> bool:
        return "pids" in self.groups

    @property
    def caps_memory(self) -> bool:
        return "memory" in self.groups

    def limit_memory(self, limit: int) -> None:
        group = self.groups.get("memory")
        if group is None:
            return
        if self.version == 2:
            ok = _write(group / "memory.max", str(limit))
            _write(group / "memory.swap.max", "0")
        else:
            ok = _write(group / "memory.limit_in_bytes", str(limit))
            _write(group / "memory.memsw.limit_in_bytes", str(limit))  # only where swap is accounted
        if not ok:
            self._drop("memory")

    def memory_usage(self) -> int:
        group = self.groups.get("memory")
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int((group / name).read_text()) if group else 0
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this group for want of memory so far."""
        group = self.groups.get("memory")
        if group is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def enter(self) -> None:
        """Called in the sandbox's first process before it execs: move it (and so all its descendants) in."""
        for group in dict.fromkeys(self.groups.values()):
            (group / "cgroup.procs").write_text("0")
        if "pids" not in self.groups and os.geteuid() != 0:
            import resource

            resource.setrlimit(resource.RLIMIT_NPROC, (self.max_processes + _user_process_count(),) * 2)

    def kill_all(self) -> None:
        for group in dict.fromkeys(self.groups.values()):
            for pid in _procs(group):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass

    def close(self) -> None:
        for group in dict.fromkeys(self.groups.values()):
            _remove(group)
        self.groups = {}


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

"""Warm test runs for one work tree: a fork server in the sandbox, started in the environment's venv with pytest and
the results plugin already imported, runs each test run in a fresh forked process (``pytest.main``).

A cold run pays interpreter and pytest start-up and recompiles every module, test modules with pytest's assertion
rewriting included, each time. Here start-up is paid once per tree and bytecode is cached beside the tree
(``<tree>/../pycache``, which resetting the tree leaves alone), so a run of a few covering tests costs little more
than collecting and running them. Isolation is the sandbox's: no network, only the tree's directory writable,
the whole process tree killed at the time limit.

Bytecode caching is safe because cached code is checked against its source's modification time and size:
``stamp_mutation`` gives every file that validation rewrites a modification time of its own, so a mutant's
bytecode is never taken for another mutant's or the original's.

    with WarmRunner(env, tree) as server:
        run = server.run(["tests/test_x.py::test_y"], timeout=120)   # a TestRun, like Environment.run_tests
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

from opencwm.forage.environment import PLUGIN, Environment, TestRun, install_plugin
from opencwm.sandbox import Sandbox, SandboxConfig

_STAMPS = itertools.count(1_000_000_000)  # 2001-09-09 onwards: never a real checkout's modification time
_STAMP_LOCK = threading.Lock()


def stamp_mutation(path: str | Path) -> None:
    """Give a rewritten source file a modification time no other version of any file gets (see module doc)."""
    with _STAMP_LOCK:
        stamp = next(_STAMPS)
    os.utime(path, (stamp, stamp))


class WarmRunner:
    def __init__(self, env: Environment, tree: str | Path, *, backend: str = "auto", memory_mb: int = 16384):
        self.env = env
        self.tree = Path(tree).resolve()
        install_plugin(env.path)
        self.pycache = self.tree.parent / "pycache"
        self.box = Sandbox(SandboxConfig(
            backend=backend, python=str(env.venv / "bin" / "python"), preload=("pytest", PLUGIN),
            env={**env.sandbox_env(self.tree), "OPENCWM_FORAGE_WARM": str(self.tree)}, visible_paths=(str(env.path),),
            writable_paths=(str(self.tree.parent),), protected_paths=(str(self.tree / ".git"),),
            memory_mb=memory_mb, max_processes=512, disk_mb=1024, disk_inodes=65_536))

    def run(self, tests: list[str] | None = None, *, timeout: float = 900) -> TestRun:
        """Run ``tests`` (node ids; None: the whole suite) on the tree as it is now."""
        with self.env.select_tests(self.tree, tests) as selection:
            outcome = self.box.run(f"{PLUGIN}:run_pytest", timeout=timeout, tree=str(self.tree),
                                   args=self.env.pytest_args(tests), pycache=str(self.pycache),
                                   select=str(selection) if selection else None)
        if not outcome.ok:
            status = outcome.status if outcome.status in ("timeout", "killed") else "error"
            return TestRun(status, {}, output=outcome.error or "", seconds=outcome.seconds)
        result = outcome.result if isinstance(outcome.result, dict) else {}
        output = result.get("output") if isinstance(result.get("output"), str) else ""
        return TestRun.from_results("ok", result, output, outcome.seconds)

    def close(self) -> None:
        self.box.close()

    def __enter__(self) -> WarmRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

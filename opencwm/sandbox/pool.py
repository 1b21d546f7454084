"""A pool of sandboxes: jobs run concurrently, one fork server per worker thread, each outcome in its future.

    with SandboxPool(SandboxConfig(timeout=3), workers=2) as pool:
        futures = [pool.submit("opencwm.eval.grade_jobs:run_program", program=p) for p in programs]
        outcomes = [f.result() for f in futures]

A job that breaks its sandbox (kills the server, runs out of memory) costs that worker a restart, never the pool
or the other jobs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from opencwm.sandbox.client import Outcome, Sandbox, SandboxConfig


class SandboxPool:
    def __init__(self, config: SandboxConfig | None = None, workers: int = 2):
        self.config = config or SandboxConfig()
        self.workers = max(1, workers)
        self._local = threading.local()
        self._sandboxes: list[Sandbox] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")

    def _sandbox(self) -> Sandbox:
        box = getattr(self._local, "box", None)
        if box is None:
            box = self._local.box = Sandbox(self.config)
            with self._lock:
                self._sandboxes.append(box)
        return box

    def submit(self, fn: str, *, timeout: float | None = None, **kwargs) -> Future[Outcome]:
        """``fn(**kwargs)`` in a fresh process of one of the pool's sandboxes (see ``Sandbox.run``)."""
        return self._executor.submit(lambda: self._sandbox().run(fn, timeout=timeout, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for box in self._sandboxes:
            box.close()
        self._sandboxes.clear()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Shared fixtures: the CruxEval file in ../shared (skipped when absent), the CPython versions pyenv offers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CRUXEVAL = REPO.parent / "shared" / "data" / "cruxeval.jsonl"
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def interpreter(version: str) -> str | None:
    """Path of a CPython ``major.minor`` interpreter, or None."""
    if sys.version_info[:2] == tuple(map(int, version.split("."))):
        return sys.executable
    for candidate in sorted(PYENV.glob(f"{version}.*"), reverse=True):
        exe = candidate / "bin" / f"python{version}"
        if exe.exists():
            return str(exe)
    return shutil.which(f"python{version}")


def working_backend(backend: str) -> bool:
    """Whether the sandbox backend ``backend`` works on this machine."""
    from opencwm.sandbox import SandboxUnavailable, detect_backend

    try:
        detect_backend(backend)
        return True
    except SandboxUnavailable:
        return False


def require_interpreter(version: str) -> str:
    exe = interpreter(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed")
    return exe


def torchrun_job(out: Path, steps: int, nproc: int = 2) -> list[dict]:
    """Run tests/distributed_train_job.py under torchrun; the report of each rank."""
    job = Path(__file__).with_name("distributed_train_job.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", str(job), str(out), str(steps)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"report-rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="session")
def cruxeval() -> list[dict]:
    if not CRUXEVAL.exists():
        pytest.skip(f"{CRUXEVAL} is absent (it is a developer/CI file, not shipped)")
    return [json.loads(line) for line in CRUXEVAL.read_text().splitlines() if line.strip()]


def run_python(exe: str, code: str, stdin: str = "", timeout: float = 300) -> str:
    """Run ``code`` with another interpreter that can import opencwm from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    result = subprocess.run([exe, "-c", code], input=stdin, capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
collect_ignore = ["data"]  # repositories made for the tests, with test suites of their own

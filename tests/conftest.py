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


DEBUG_DEMO = REPO / "examples" / "debug_demo.py"
DEBUG_DEMO_CALLS = ("f(1)", "f(2)", "f(3)", "f(4)")


def _reproduces_every_trace(model: Path) -> bool:
    """Whether greedy prediction gives exactly the real trace of each of the demo's calls, stepping into calls
    and over them (``next``)."""
    from opencwm.infer.compare import align
    from opencwm.infer.debugger import NeuralDebugger
    from opencwm.infer.local import LocalCompleter
    from opencwm.trace.inputs import python_file_items
    from opencwm.trace.program import trace_program

    completer = LocalCompleter.from_checkpoint(model)
    source = python_file_items(DEBUG_DEMO)[0].kwargs["source"]
    for call in DEBUG_DEMO_CALLS:
        real = trace_program(source, call)
        for move in ("step", "next"):
            debugger = NeuralDebugger(completer, source, real.entry_lineno, first_frame=real.frames[0])
            for _ in range(len(real.frames) + 2):
                if debugger.finished or debugger.current.error:
                    break
                getattr(debugger, move)()
            rows = align(debugger.steps, real.frames, finished=debugger.finished)
            if not debugger.finished or not all(row.same for row in rows):
                return False
    return True


LONG_FIXTURES = ("readme_walkthrough", "debug_demo_model")
LONG_FIXTURE_TIMEOUT = 2400  # the whole README walkthrough, demo training included (about 15 minutes on 2 cores)


def pytest_collection_modifyitems(items):
    """A test that may be the first to ask for a session fixture that runs for many minutes gets their time too."""
    for item in items:
        if any(fixture in item.fixturenames for fixture in LONG_FIXTURES):
            item.add_marker(pytest.mark.timeout(LONG_FIXTURE_TIMEOUT))


@pytest.fixture(scope="session")
def readme_walkthrough(tmp_path_factory) -> tuple[Path, AssertionError | None]:
    """Every README command run as written, once per test session (``make test-slow``): its directory and the
    first failure, if any (``test_readme`` reports it; other tests take what the walkthrough made)."""
    from readme_contract import FAST, SLOW, walkthrough

    from opencwm.forage.docker import local_engine

    directory = tmp_path_factory.mktemp("readme")
    with local_engine() as no_engine:  # (the README's --sandbox docker command needs one)
        try:
            walkthrough(directory, {FAST, SLOW}, docker=no_engine is None)
        except AssertionError as failure:
            return directory, failure
    return directory, None


README_DEMO_MODEL = Path("runs/debug-demo/checkpoints/step-000600/model")


@pytest.fixture(scope="session")
def debug_demo_model(tmp_path_factory, request) -> Path:
    """A ``nano`` model trained here, with the README's commands, until it reproduces the real traces of
    ``examples/debug_demo.py``'s calls (the full traces and those with the helper's body skipped): the ground on
    which the neural debugger's moves are checked against the real tracer. Trained once per test session with the
    README's recipe (600 steps, about four minutes on 2 cores: the tests that use it are ``make test-slow``'s), which
    is the model the README walkthrough trains, when that one reproduces them."""
    from opencwm.cli import main

    trained = os.environ.get("OPENCWM_DEBUG_DEMO_MODEL")  # a model trained so before (the README's commands)
    if trained and _reproduces_every_trace(Path(trained)):
        return Path(trained)
    readme, _ = request.getfixturevalue("readme_walkthrough")  # the README trains it with these commands
    if (readme / README_DEMO_MODEL / "config.json").exists() and _reproduces_every_trace(readme / README_DEMO_MODEL):
        return readme / README_DEMO_MODEL
    root = tmp_path_factory.mktemp("debug-demo")
    assert main(["trace", "collect", str(DEBUG_DEMO), "--out", str(root / "traces")]) == 0
    for steps in (600, 800):  # the run resumes: more steps until every trace is reproduced
        assert main(["train", "--preset", "nano", "--sliding-window", "512", "--lr", "0.006", "--out",
                     str(root / "run"), "--data", f"traces={root / 'traces'}", "--data",
                     f"skipped_calls={root / 'traces'}", "--steps", str(steps), "--vocab", "300", "--seq-len", "512",
                     "--batch-size", "4", "--checkpoint-every", "200", "--quiet"]) == 0
        model = root / "run" / "checkpoints" / f"step-{steps:06d}" / "model"
        if _reproduces_every_trace(model):
            return model
    pytest.fail(f"the demo model does not reproduce the real traces after {steps} steps")


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A random ``nano`` model with a tokenizer fitted to the demo program's traces, saved as training saves
    checkpoints: what a model that writes malformed frames looks like to the debugger (seconds to make)."""
    from opencwm.model import CWM, preset
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.codec import encode
    from opencwm.trace.inputs import python_file_items
    from opencwm.trace.program import trace_program

    source = python_file_items(DEBUG_DEMO)[0].kwargs["source"]
    texts = [encode(trace_program(source, call)) for call in DEBUG_DEMO_CALLS]
    tokenizer = Tokenizer.train(texts * 4, vocab_size=300)
    folder = tmp_path_factory.mktemp("untrained") / "model"
    CWM(preset("nano", **tokenizer.config_fields())).init_weights(seed=3).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


@pytest.fixture(scope="session")
def forage_task_dir(tmp_path_factory) -> Path:
    """Mutate-fix tasks of the toy repository's environment (opencwm forage mutate's output; seconds to make)."""
    from opencwm.forage.build import build_environment
    from opencwm.forage.tasks import mutate

    env = build_environment(str(REPO / "tests" / "data" / "toyrepo"), tmp_path_factory.mktemp("envs"))
    assert env.ok, env.info.get("error")
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    assert mutate(env, out, workers=2, max_candidates=6).validated >= 2
    return out


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine for the session's Docker tests: one that answers, else (as root, with docker.io installed)
    a dockerd started here and stopped at the end; the tests skip with the reason when there is none."""
    from opencwm.forage.docker import local_engine

    with local_engine() as why:
        if why is not None:
            pytest.skip(f"no Docker engine: {why}")
        yield

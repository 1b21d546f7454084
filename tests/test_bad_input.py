"""Bad input gets one line and loses nothing: for every subcommand, wrong arguments and malformed files end with
one line on stderr, a non-zero exit, no Python traceback, and nothing written (the directory the command runs in
holds the same files before and after)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _files(directory: Path) -> dict[str, float]:
    return {str(p.relative_to(directory)): p.stat().st_mtime for p in directory.rglob("*")}


def _setup(directory: Path) -> None:
    """Files the cases point at: good ones beside bad ones."""
    (directory / "prog.py").write_text("def f(x):\n    return x\n")
    (directory / "syntax.py").write_text("def f(:\n")
    (directory / "empty.jsonl").write_text("")
    (directory / "notes.txt").write_text("hello\n")
    (directory / "notdata").mkdir()
    (directory / "env").mkdir()  # an environment directory that claims to have built (import reads its file first)
    (directory / "env" / "env.json").write_text(json.dumps({"status": "ok", "key": "x", "base_commit": "0" * 40}))
    (directory / "script.jsonl").write_text("{not json\n")
    empty = directory / "emptyset"  # a dataset with no rows
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"kind": "opencwm.traces", "format_version": 1, "schema": {},
                                                     "rows": 0, "shards": [], "metadata": {}}))
    subprocess.run([sys.executable, "-m", "opencwm.cli", "data", "programs", "--out", "programs", "--count", "3"],
                   cwd=directory, check=True, capture_output=True)


CASES = {
    "no area": [],
    "unknown area": ["nope"],
    "run: missing file": ["trace", "run", "nope.py"],
    "run: syntax error": ["trace", "run", "syntax.py", "--call", "f(1)"],
    "run: bad call": ["trace", "run", "prog.py", "--call", "f("],
    "run: no call found": ["trace", "run", "prog.py"],
    "run: zero timeout": ["trace", "run", "prog.py", "--call", "f(1)", "--timeout", "0"],
    "run: zero frames": ["trace", "run", "prog.py", "--call", "f(1)", "--max-frames", "0"],
    "run: no such interpreter": ["trace", "run", "prog.py", "--call", "f(1)", "--python", "/no/python"],
    "run: unknown format": ["trace", "run", "prog.py", "--format", "xml"],
    "collect: empty jsonl": ["trace", "collect", "empty.jsonl", "--out", "out"],
    "collect: missing source": ["trace", "collect", "nope.jsonl", "--out", "out"],
    "collect: unknown kind": ["trace", "collect", "notes.txt", "--out", "out"],
    "collect: zero workers": ["trace", "collect", "prog.py", "--call", "f(1)", "--out", "out", "--workers", "0"],
    "collect: no --out": ["trace", "collect", "prog.py"],
    "show: not a dataset": ["trace", "show", "notdata"],
    "show: no such id": ["trace", "show", "emptyset", "--id", "x"],
    "show: negative limit": ["trace", "show", "emptyset", "--limit", "-1"],
    "show: unknown status": ["trace", "show", "emptyset", "--status", "nope"],
    "sandbox: unknown layer": ["sandbox", "check", "--without", "nope"],
    "data code: missing holdout": ["data", "code", "--out", "code", "--holdout", "nope.jsonl", "--max-files", "3"],
    "data programs: zero count": ["data", "programs", "--out", "p2", "--count", "0"],
    "data programs: difficulty 9": ["data", "programs", "--out", "p2", "--difficulty", "9"],
    "data programs: changed seed": ["data", "programs", "--out", "programs", "--count", "3", "--seed", "1"],
    "train: unknown preset": ["train", "--preset", "tinyy", "--out", "run", "--data", "t=programs"],
    "train: missing --init": ["train", "--init", "runs/nope/model", "--out", "run", "--data", "t=programs"],
    "train: bad --data": ["train", "--out", "run", "--data", "nonsense"],
    "train: data not a dataset": ["train", "--out", "run", "--data", "t=notdata"],
    "train: empty dataset": ["train", "--out", "run", "--data", "t=emptyset"],
    "train: warmup past steps": ["train", "--out", "run", "--data", "t=programs", "--steps", "5", "--warmup", "10"],
    "train: zero steps": ["train", "--out", "run", "--data", "t=programs", "--steps", "0"],
    "train: decay past the steps": ["train", "--out", "run", "--data", "t=programs", "--decay-fraction", "1.5"],
    "eval: nothing to evaluate": ["eval", "trace", "--model", "notdata"],
    "eval: not a checkpoint": ["eval", "trace", "--model", "notdata", "--traces", "emptyset"],
    "eval: zero window": ["eval", "trace", "--model", "notdata", "--traces", "emptyset", "--window", "0"],
    "speedrun: negative budget": ["speedrun", "--out", "sr", "--time-budget", "-1"],
    "model info: unknown model": ["model", "info", "cwm-99b"],
    "model info: zero context": ["model", "info", "nano", "--context", "0"],
    "model info: utilization past 1": ["model", "info", "nano", "--gpu-utilization", "2"],
    "forage env: not a source": ["forage", "env", "nope", "--cache", "envs"],
    "forage mutate: no environment": ["forage", "mutate", "nope", "--cache", "envs", "--out", "tasks"],
    "forage import: missing file": ["forage", "import", "nope.jsonl", "--env", "env", "--out", "tasks"],
    "forage run: not tasks": ["forage", "run", "notdata", "--policy", "oracle", "--out", "traj"],
    "forage run: wrong kind": ["forage", "run", "programs", "--policy", "oracle", "--out", "traj"],
    "forage show: not trajectories": ["forage", "show", "programs"],
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bad")
    _setup(directory)
    return directory


@pytest.mark.parametrize("args", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_writes_nothing(workdir, args):
    before = _files(workdir)
    result = subprocess.run([sys.executable, "-m", "opencwm.cli", *args], cwd=workdir, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OPENCWM_CACHE": str(workdir / "cache")})
    assert result.returncode != 0, result.stdout[-500:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("opencwm"), result.stderr
    assert _files(workdir) == before


def test_bad_files_for_the_forager_policies_are_one_line(workdir):
    """Policy arguments are checked before any episode: a script that is not JSON, a checkpoint that is not one,
    an endpoint without its URL."""
    from opencwm.forage.tasks import SCHEMA
    from opencwm.shards import ShardWriter

    with ShardWriter(workdir / "tasks-empty", SCHEMA, "opencwm.forage.tasks"):
        pass
    for policy in (["--policy", "scripted", "--script", "script.jsonl"], ["--policy", "scripted"],
                   ["--policy", "local", "--model", "runs/nope"], ["--policy", "openai", "--model", "cwm"]):
        before = _files(workdir)
        result = subprocess.run([sys.executable, "-m", "opencwm.cli", "forage", "run", "tasks-empty", *policy,
                                 "--out", "traj"], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (policy, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (policy, result.stderr)
        assert _files(workdir) == before, policy

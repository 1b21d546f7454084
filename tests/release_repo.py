"""A git repository with real history for SWE-bench-format tests and the README's walkthrough: two releases of the
toy package (1.0: ``mean([])`` divides by zero; 1.1: it returns 0.0, with a test that shows it), and instances and
predictions in SWE-bench's format made from the change between them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

TOY = Path(__file__).parent / "data" / "toyrepo"
FIXED_MEAN = "def mean(values):\n    if not values:\n        return 0.0\n    total = 0\n"
NEW_TEST = "\n\ndef test_mean_of_nothing():\n    assert mean([]) == 0.0\n"
PASSING = [f"tests/test_toycalc.py::{name}" for name in ("test_clamp_inside", "test_clamp_edges", "test_mean",
                                                          "test_running_max", "test_words")]


def git_cli(repo: Path, *args: str) -> str:
    """The test's own git (on a trusted repository it made)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def make_release_repo(repo: Path) -> tuple[Path, str, str]:
    """The repository at ``repo``: (its path, the 1.0 commit, the 1.1 commit); tags v1.0 and v1.1."""
    shutil.copytree(TOY, repo)
    git_cli(repo, "init", "-q", "-b", "main")
    git_cli(repo, "add", "-A")
    git_cli(repo, "commit", "-q", "-m", "release 1.0")
    git_cli(repo, "tag", "v1.0")
    source = repo / "toycalc" / "__init__.py"
    source.write_text(source.read_text().replace("def mean(values):\n    total = 0\n", FIXED_MEAN))
    tests = repo / "tests" / "test_toycalc.py"
    tests.write_text(tests.read_text() + NEW_TEST)
    git_cli(repo, "commit", "-q", "-am", "release 1.1: the mean of nothing is 0.0")
    git_cli(repo, "tag", "v1.1")
    return repo, git_cli(repo, "rev-parse", "v1.0").strip(), git_cli(repo, "rev-parse", "v1.1").strip()


def instance(repo: Path, old: str, new: str, instance_id: str = "toycalc__toycalc-1") -> dict:
    """The SWE-bench instance of the 1.1 fix: base_commit 1.0, patch the package's change, test_patch the test."""
    return {"instance_id": instance_id, "repo": "example/toycalc", "base_commit": old,
            "problem_statement": "mean([]) raises ZeroDivisionError", "version": "1.0",
            "patch": git_cli(repo, "diff", old, new, "--", "toycalc"),
            "test_patch": git_cli(repo, "diff", old, new, "--", "tests"),
            "FAIL_TO_PASS": ["tests/test_toycalc.py::test_mean_of_nothing"], "PASS_TO_PASS": json.dumps(PASSING)}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path

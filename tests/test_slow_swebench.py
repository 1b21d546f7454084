"""Real-world check of SWE-bench-format data (make test-slow): a git repository whose commits are two consecutive
releases of a real PyPI package (more-itertools 10.1.0 and 10.2.0, from their source distributions), instances whose
``base_commit`` is the older release, whose ``patch`` is the real change between them and whose ``test_patch`` adds the
tests that show it; import, validation and grading of gold, empty, wrong and unappliable predictions through the CLI,
each verdict equal to the ``swebench`` package's on the same test log."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time

import pytest
from release_repo import git_cli
from test_swebench import cli, same_verdict, swebench_report

from opencwm.forage.build import _fetch_sdist

RELEASES = ("10.1.0", "10.2.0")
RECIPES = "tests/test_recipes.py"


def release_repository(work) -> tuple:
    """The repository: each release's unpacked sdist as one commit, tagged ``vX``."""
    repo = work / "more-itertools"
    repo.mkdir()
    git_cli(repo, "init", "-q", "-b", "main")
    for version in RELEASES:
        for child in repo.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        download = work / version
        download.mkdir()
        unpacked = _fetch_sdist(f"more-itertools=={version}", download)
        for child in unpacked.iterdir():
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, repo / child.name)
        git_cli(repo, "add", "-A")
        git_cli(repo, "commit", "-q", "-m", f"more-itertools {version}")
        git_cli(repo, "tag", f"v{version}")
    return repo, *(git_cli(repo, "rev-parse", f"v{v}").strip() for v in RELEASES)


@pytest.mark.slow
def test_release_history_imports_validates_and_grades_as_swebench_does(tmp_path):
    try:
        repo, old, new = release_repository(tmp_path)
    except Exception as exc:  # (no PyPI: nothing to build from)
        if isinstance(exc, (tarfile.TarError, AssertionError)):
            raise
        pytest.skip(f"PyPI unreachable: {exc}")
    patch = git_cli(repo, "diff", old, new, "--", "more_itertools")  # the release's change to the package
    test_patch = git_cli(repo, "diff", old, new, "--", "tests")
    assert "def totient(n):" in patch and "class TotientTests" in test_patch
    kept = [f"{RECIPES}::TakeTests::{name}" for name in ("test_simple_take", "test_null_take", "test_negative_take",
                                                           "test_take_too_much")]
    base = {"repo": "more-itertools/more-itertools", "base_commit": old, "patch": patch, "test_patch": test_patch,
            "problem_statement": "Add totient() and reshape() from the itertools docs", "version": "10.1"}
    instances = [
        {**base, "instance_id": "more-itertools__more-itertools-totient",
         "FAIL_TO_PASS": [f"{RECIPES}::TotientTests::test_basic"], "PASS_TO_PASS": kept},
        {**base, "instance_id": "more-itertools__more-itertools-reshape",
         "FAIL_TO_PASS": [f"{RECIPES}::ReshapeTests::test_basic", f"{RECIPES}::ReshapeTests::test_empty"],
         "PASS_TO_PASS": kept},
        {**base, "instance_id": "more-itertools__more-itertools-bad",  # a test the old release passes already
         "FAIL_TO_PASS": [f"{RECIPES}::TakeTests::test_simple_take"], "PASS_TO_PASS": []},
    ]
    (tmp_path / "instances.jsonl").write_text("".join(json.dumps(i) + "\n" for i in instances))
    start = time.monotonic()
    imported = cli("forage", "import", "instances.jsonl", "--repo", str(repo), "--out", "tasks", "--json", "--quiet",
                   cwd=tmp_path)
    import_seconds = time.monotonic() - start
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert summary["validated"] == 2 and list(summary["not_validated"]) == ["more-itertools__more-itertools-bad"]
    assert summary["not_validated"]["more-itertools__more-itertools-bad"].startswith("invalid: FAIL_TO_PASS passing")
    assert len(list((tmp_path / "cache" / "envs").glob("more-itertools-*"))) == 1  # one per repository and commit

    wrong = patch.replace("n = n // p * (p - 1)", "n = n // p * p")
    assert wrong != patch
    lines = patch.splitlines(keepends=True)
    context = next(i for i, line in enumerate(lines) if line.startswith(" ") and line.strip())
    lines[context] = " # a line the release does not have\n"
    unappliable = "".join(lines)  # its context is not in the tree
    totient = "more-itertools__more-itertools-totient"
    predictions = {"gold": patch, "empty": "", "wrong": wrong, "unappliable": unappliable}
    for name, model_patch in predictions.items():
        prediction = {"instance_id": totient, "model_name_or_path": name, "model_patch": model_patch}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(prediction) + "\n")
        start = time.monotonic()
        graded = cli("forage", "grade", f"{name}.jsonl", "--tasks", "tasks", "--out", f"grade-{name}", "--json",
                     "--quiet", cwd=tmp_path)
        print(f"grade {name}: {time.monotonic() - start:.1f} s")
        assert graded.returncode == 0, graded.stderr
        report = json.loads(graded.stdout)
        expected = {"gold": "resolved_ids", "empty": "empty_patch_ids", "wrong": "unresolved_ids",
                    "unappliable": "patch_apply_failed_ids"}[name]
        assert report[expected] == [totient], (name, report)
        assert report["resolved_ids"] == ([totient] if name == "gold" else [])
        folder = tmp_path / f"grade-{name}" / totient
        ours = json.loads((folder / "report.json").read_text())[totient]
        assert same_verdict(ours, swebench_report(instances[0], prediction, folder / "test_output.txt")), name
    print(f"import of {len(instances)} instances (one environment built, 2 validated): {import_seconds:.1f} s")
    env_json = next((tmp_path / "cache" / "envs").glob("more-itertools-*/env.json"))
    info = json.loads(env_json.read_text())
    print(f"environment: {info['build_seconds']} s to build, {len(info['tests'])} tests")
    assert info["base_commit"] == old and subprocess.run(
        ["git", "-C", str(env_json.parent / "repo"), "cat-file", "-e", new]).returncode == 0

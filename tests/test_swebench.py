"""SWE-bench-format instances end to end on a repository with real history (two releases of the toy package, made
here with git): ``forage env --commit``, ``forage import`` (SWE-bench's validation, every instance a row with its
reason), ``forage grade`` (gold, empty, wrong and unappliable predictions), and the grading verdicts checked against
the ``swebench`` package's own grading functions on the same test logs. The slow tier does the same on consecutive
releases of a real PyPI package (``tests/test_slow_swebench.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from release_repo import git_cli, instance, make_release_repo

from opencwm.forage.build import build_environment
from opencwm.forage.environment import Environment
from opencwm.forage.swebench import folder_name
from opencwm.forage.verdicts import Evaluation, instance_report, run_instance


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opencwm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OPENCWM_CACHE": str(cwd / "cache")})


def swebench_report(instance: dict, prediction: dict, log: Path) -> dict:
    """The swebench package's own per-instance report of a test log."""
    from swebench.harness.grading import get_eval_report
    from swebench.types import TestSpec

    lists = {k: json.loads(instance[k]) if isinstance(instance[k], str) else instance[k]
             for k in ("FAIL_TO_PASS", "PASS_TO_PASS")}
    spec = TestSpec(instance_id=instance["instance_id"], image="", eval_script_list=[], repo=instance["repo"],
                    version="", log_parser="parse_log_pytest", eval_type="pass_and_fail", **lists)
    return get_eval_report(spec, prediction, str(log), include_tests_status=True)[instance["instance_id"]]


def same_verdict(ours: dict, theirs: dict) -> bool:
    keys = ("patch_is_None", "patch_exists", "patch_successfully_applied", "resolved")
    return all(ours[k] == theirs[k] for k in keys) and ours.get("tests_status") == (
        None if "tests_status" not in theirs else
        {k: theirs["tests_status"][k] for k in ("FAIL_TO_PASS", "PASS_TO_PASS")})


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> tuple[Path, str, str]:
    return make_release_repo(tmp_path_factory.mktemp("releases") / "toycalc")


@pytest.fixture(scope="module")
def instances(releases) -> list[dict]:
    good = instance(*releases)
    return [good,
            {**good, "instance_id": "toycalc__toycalc-2", "FAIL_TO_PASS": ["tests/test_toycalc.py::test_mean"]},
            {**good, "instance_id": "toycalc__toycalc-3", "base_commit": "0" * 40},
            {**good, "instance_id": "other__thing-4", "repo": "other/thing"},
            *({**good, "instance_id": f"toycalc__toycalc-1{c}"} for c in "abc"),
            {**good, "instance_id": "../../escaped"}]  # an id that is no file name


def test_import_validate_and_grade_through_the_cli_as_swebench_grades(releases, instances, tmp_path):
    repo, old, new = releases
    (tmp_path / "instances.jsonl").write_text("".join(json.dumps(i) + "\n" for i in instances))

    built = cli("forage", "env", str(repo), "--commit", "v1.0", "--json", "--quiet", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["passing"] == 5  # release 1.0's suite
    env = Environment.open(json.loads(built.stdout)["env"])
    assert env.base_commit == old and git_cli(env.repo, "cat-file", "-t", new).strip() == "commit"  # history kept

    imported = cli("forage", "import", "instances.jsonl", "--repo", f"example/toycalc={repo}", "--out", "tasks",
                   "--json", "--quiet", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert summary["instances"] == 8 and summary["validated"] == 5
    why = summary["not_validated"]
    assert why["toycalc__toycalc-2"].startswith("invalid: FAIL_TO_PASS passing before the patch: "
                                                "tests/test_toycalc.py::test_mean")
    assert why["toycalc__toycalc-3"].startswith("build_failed:") and "no commit" in why["toycalc__toycalc-3"]
    assert why["other__thing-4"].startswith("no_repository:")
    again = cli("forage", "import", "instances.jsonl", "--repo", f"example/toycalc={repo}", "--out", "tasks",
                "--json", "--quiet", cwd=tmp_path)  # resumed: nothing done twice
    assert json.loads(again.stdout)["instances"] == 8

    gold = instances[0]["patch"]
    wrong = gold.replace("return 0.0", "return None")
    unappliable = gold.replace("def mean(values):", "def average(values):")
    predictions = [{"instance_id": "toycalc__toycalc-1", "model_name_or_path": "m", "model_patch": gold},
                   {"instance_id": "toycalc__toycalc-1a", "model_name_or_path": "m", "model_patch": ""},
                   {"instance_id": "toycalc__toycalc-1b", "model_name_or_path": "m", "model_patch": wrong},
                   {"instance_id": "toycalc__toycalc-1c", "model_name_or_path": "m", "model_patch": unappliable},
                   {"instance_id": "../../escaped", "model_name_or_path": "m", "model_patch": gold}]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    graded = cli("forage", "grade", "predictions.jsonl", "--tasks", "tasks", "--out", "grade", "--json", "--quiet",
                 cwd=tmp_path)
    assert graded.returncode == 0, graded.stderr
    report = json.loads(graded.stdout)
    assert report["resolved_ids"] == ["../../escaped", "toycalc__toycalc-1"]
    assert report["unresolved_ids"] == ["toycalc__toycalc-1b"]
    assert report["empty_patch_ids"] == ["toycalc__toycalc-1a"]
    assert report["patch_apply_failed_ids"] == report["error_ids"] == ["toycalc__toycalc-1c"]
    assert report == json.loads((tmp_path / "grade" / "report.json").read_text())
    by_id = {i["instance_id"]: i for i in instances}
    assert not (tmp_path / "escaped").exists() and len(list((tmp_path / "grade").glob("instance-*"))) == 1
    for prediction in predictions:
        folder = tmp_path / "grade" / folder_name(prediction["instance_id"])
        ours = json.loads((folder / "report.json").read_text())[prediction["instance_id"]]
        theirs = swebench_report(by_id[prediction["instance_id"]], prediction, folder / "test_output.txt")
        assert same_verdict(ours, theirs), (prediction["instance_id"], ours, theirs)
    wrong_report = json.loads((tmp_path / "grade" / "toycalc__toycalc-1b" / "report.json").read_text())
    assert wrong_report["toycalc__toycalc-1b"]["tests_status"]["FAIL_TO_PASS"]["failure"] == [
        "tests/test_toycalc.py::test_mean_of_nothing"]

    ran = cli("forage", "run", "tasks", "--policy", "oracle", "--out", "traj", "--json", "--quiet", cwd=tmp_path)
    assert ran.returncode == 0 and json.loads(ran.stdout)["solved"] == 5, ran.stderr  # the test patch applied

    bad = cli("forage", "grade", "nope.jsonl", "--tasks", "tasks", "--out", "g2", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope.jsonl" in bad.stderr
    norepo = cli("forage", "import", "instances.jsonl", "--repo", str(tmp_path), "--out", "t2", cwd=tmp_path)
    assert norepo.returncode == 2 and "not a git repository" in norepo.stderr and norepo.stderr.count("\n") == 1


STATUSES = '''import pytest


def test_passes():
    pass


def test_fails():
    assert 1 == 2


@pytest.fixture
def broken():
    raise RuntimeError("set-up fails")


def test_errors(broken):
    pass


def test_skipped():
    pytest.skip("not here")


@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False


@pytest.mark.xfail(reason="known")
def test_unexpected_pass():
    pass


@pytest.mark.parametrize("value", ["a b", "c-d", 3])
def test_parametrized(value):
    assert value != 3
'''


def test_every_pytest_outcome_grades_as_swebench_grades_it(releases, tmp_path):
    """Passed, failed, errored, skipped, xfailed, xpassed and parametrized tests (spaces in ids included), as
    FAIL_TO_PASS and as PASS_TO_PASS, missing ones too: our report equals the swebench package's on the log of the
    same run."""
    repo, old, _ = releases
    env = build_environment(str(repo), tmp_path / "envs", commit=old)
    assert env.ok, env.info.get("error")
    names = ["test_passes", "test_fails", "test_errors", "test_skipped", "test_expected_failure",
             "test_unexpected_pass", "test_parametrized[a b]", "test_parametrized[c-d]", "test_parametrized[3]",
             "test_missing", "test_parametrized[a"]
    ids = [f"tests/test_statuses.py::{n}" for n in names]
    test_patch = subprocess.run(["git", "diff", "--no-index", "/dev/null", "tests/test_statuses.py"],
                                capture_output=True, text=True, cwd=_write(tmp_path / "t", STATUSES)).stdout
    for number, (f2p, p2p) in enumerate([(ids, []), ([], ids), (ids[:1], ids[1:]), (ids[6:8], ids[:1]),
                                         (ids[4:5], ids[6:7]), (ids[3:4], [])]):
        task = {"instance_id": f"statuses-{number}", "repo": "example/toycalc", "base_commit": old,
                "test_patch": test_patch, "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p}
        evaluation = run_instance(env, task, "")
        assert evaluation.applied and evaluation.run.status == "ok", evaluation.log[-2000:]
        log = tmp_path / f"log-{number}.txt"
        log.write_text(evaluation.log)
        prediction = {"instance_id": task["instance_id"], "model_name_or_path": "m", "model_patch": ""}
        ours = instance_report(task, "", evaluation)[task["instance_id"]]
        assert same_verdict(ours, swebench_report(task, prediction, log)), (number, ours)
    nothing = Evaluation(False, None, ">>>>> Patch Apply Failed\n")
    (tmp_path / "failed.txt").write_text(nothing.log)
    ours = instance_report(task, "x", nothing)[task["instance_id"]]
    assert same_verdict(ours, swebench_report(task, {"instance_id": task["instance_id"], "model_patch": "x"},
                                              tmp_path / "failed.txt"))


def _write(folder: Path, text: str) -> Path:
    (folder / "tests").mkdir(parents=True)
    (folder / "tests" / "test_statuses.py").write_text(text)
    return folder


def test_a_repository_with_uncommitted_changes_keeps_its_history_and_the_changes(releases, tmp_path):
    repo, old, new = releases
    clone = tmp_path / "clone"
    git_cli(tmp_path, "clone", "-q", str(repo), str(clone))
    (clone / "toycalc" / "__init__.py").write_text((clone / "toycalc" / "__init__.py").read_text() + "\n# local\n")
    (clone / "notes.py").write_text("X = 1\n")  # untracked, not ignored: part of the tree as the user sees it
    env = build_environment(str(clone), tmp_path / "envs")
    assert env.ok, env.info.get("error")
    assert git_cli(env.repo, "rev-parse", f"{env.base_commit}~1").strip() == new  # on top of the checked-out HEAD
    assert "# local" in git_cli(env.repo, "show", f"{env.base_commit}:toycalc/__init__.py")
    assert git_cli(env.repo, "show", f"{env.base_commit}:notes.py") == "X = 1\n"
    assert git_cli(env.repo, "cat-file", "-t", old).strip() == "commit" and env.info["passing"] == 6
    (clone / "notes.py").write_text("X = 2\n")
    assert build_environment(str(clone), tmp_path / "envs").path != env.path  # the content is the key
    at_old = build_environment(str(clone), tmp_path / "envs", commit="v1.0")
    assert at_old.base_commit == old and at_old.info["passing"] == 5

"""SWE-bench's verdict on a run of an instance's tests: the run itself (``run_instance``: a patch on a fresh tree at
the instance's ``base_commit``, the test patch's files reset and the test patch applied, the listed tests run in the
sandbox or a container), its log as SWE-bench's harness writes it (its markers around pytest's ``-rA`` output, the
exit code after them) and the rules SWE-bench's grading applies (``swebench.harness.grading``): ``test_passed`` /
``test_failed`` / ``test_maintained``, FULL/PARTIAL/NO resolution, the per-instance report.

The rules read the outcomes the results plugin recorded as SWE-bench's pytest log parser reads the same run's log
(``status_map``: ``xfailed`` a pass; skipped and ``xpassed`` tests absent, so failures; ids cut at whitespace);
rewards read them on exact node ids (``as_logged=False``). ``tests/test_swebench.py`` feeds the same logs to the
``swebench`` package.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opencwm.forage.environment import Environment, git, git_command, git_environment
from opencwm.forage.testrun import TestRun

APPLY_PATCH_FAIL, TESTS_ERROR, TESTS_TIMEOUT = ">>>>> Patch Apply Failed", ">>>>> Tests Errored", \
    ">>>>> Tests Timed Out"
START_TEST_OUTPUT, END_TEST_OUTPUT, TEST_EXIT_CODE = ">>>>> Start Test Output", ">>>>> End Test Output", \
    ">>>>> Test Exit Code"
STATUS = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED", "xfailed": "XFAIL"}
FULL, PARTIAL, NO = "RESOLVED_FULL", "RESOLVED_PARTIAL", "RESOLVED_NO"


def test_lists(instance: dict) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS) of an instance, whether stored as lists or as JSON text (SWE-bench's datasets)."""
    out = []
    for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
        value = instance[key]
        value = json.loads(value) if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise ValueError(f"{key} is not a list of test names")
        out.append(value)
    return out[0], out[1]


SUMMARY_ORDER = ("passed", "skipped", "xfailed", "xpassed", "error", "failed")  # pytest's -rA summary, in order


def status_map(run: TestRun, *, as_logged: bool = True) -> dict[str, str]:
    """A run's outcomes in SWE-bench's statuses. ``as_logged``: as SWE-bench's pytest log parser reads them from
    the ``-rA`` summary -- a skipped test is absent (pytest writes skips as ``SKIPPED [N] file:line: reason``,
    which the parser ignores), so is an xpassed one, an id is cut at its first whitespace (the parser splits lines
    on it) and where cut ids collide the line pytest prints last wins. Otherwise every test under its exact node
    id (skipped ones as SKIPPED), which is what rewards read: a mutate-fix task's ids may hold spaces."""
    if not as_logged:
        return {test: STATUS[outcome] for test, outcome in run.outcomes.items() if outcome in STATUS}
    statuses = {}
    for outcome in SUMMARY_ORDER:
        for test, found in run.outcomes.items():
            if found == outcome and outcome in STATUS and outcome != "skipped" and test.split():
                statuses[test.split()[0]] = STATUS[outcome]
    return statuses


def _key(case: str, statuses: dict[str, str]) -> str | None:
    """The status key of ``case``; a parametrized id cut short (more ``[`` than ``]``) matches the ids it starts,
    when they agree on passing or not (SWE-bench does this for its truncated ids)."""
    if case in statuses:
        return case
    if case.count("[") > case.count("]"):
        matches = [k for k in statuses if k.startswith(case)]
        if matches and len({statuses[k] in ("PASSED", "XFAIL") for k in matches}) == 1:
            return matches[0]
    return None


def test_passed(case: str, statuses: dict[str, str]) -> bool:
    key = _key(case, statuses)
    return key is not None and statuses[key] in ("PASSED", "XFAIL")


def test_failed(case: str, statuses: dict[str, str]) -> bool:
    key = _key(case, statuses)
    return key is None or statuses[key] in ("FAILED", "ERROR", "SKIPPED")


def test_maintained(case: str, statuses: dict[str, str]) -> bool:
    key = _key(case, statuses)
    return test_passed(case, statuses) or (key is not None and statuses[key] == "SKIPPED")


def tests_report(statuses: dict[str, str], fail_to_pass: list[str], pass_to_pass: list[str]) -> dict:
    """SWE-bench's ``tests_status``: which FAIL_TO_PASS and PASS_TO_PASS tests succeeded and which failed."""
    report = {"FAIL_TO_PASS": {"success": [], "failure": []}, "PASS_TO_PASS": {"success": [], "failure": []}}
    for case in fail_to_pass:
        if test_passed(case, statuses):
            report["FAIL_TO_PASS"]["success"].append(case)
        elif test_failed(case, statuses):
            report["FAIL_TO_PASS"]["failure"].append(case)
    for case in pass_to_pass:
        if test_maintained(case, statuses):
            report["PASS_TO_PASS"]["success"].append(case)
        elif test_failed(case, statuses):
            report["PASS_TO_PASS"]["failure"].append(case)
    return report


def resolution(report: dict) -> str:
    def rate(part: dict) -> float:
        total = len(part["success"]) + len(part["failure"])
        return 1 if total == 0 else len(part["success"]) / total

    f2p, p2p = rate(report["FAIL_TO_PASS"]), rate(report["PASS_TO_PASS"])
    if f2p == 1 and p2p == 1:
        return FULL
    return PARTIAL if 0 < f2p < 1 and p2p == 1 else NO


# -- running an instance's tests ----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One run of an instance's tests on a tree with a patch: whether the patch and the test patch applied, the
    run (None when nothing ran), the log as SWE-bench's harness writes it."""
    applied: bool
    run: TestRun | None
    log: str

    def statuses(self, *, as_logged: bool = True) -> dict[str, str] | None:
        """SWE-bench's status map (``status_map``), or None where SWE-bench finds no usable test output (a patch
        that did not apply, a run that errored or timed out, no test in the status map, or a failing exit status
        with no test failing)."""
        run = self.run
        if not self.applied or run is None or run.status != "ok" or not run.outcomes:
            return None
        statuses = status_map(run, as_logged=as_logged)
        if not statuses:  # nothing in the log says a test ran (every test skipped, say)
            return None
        if run.exit_code not in (None, 0) and not {"FAILED", "ERROR"} & set(statuses.values()):
            return None
        return statuses


def run_instance(env: Environment, task: dict, patch: str, *, backend: str = "auto",
                 timeout: float = 900) -> Evaluation:
    """``patch`` (a model's, or the gold one) applied to a fresh tree at the task's ``base_commit``, then its
    ``test_patch``; its FAIL_TO_PASS and PASS_TO_PASS tests run in the sandbox."""
    fail_to_pass, pass_to_pass = test_lists(task)
    tree = env.checkout(task["base_commit"])
    try:
        if not Environment.apply(tree, patch):
            return Evaluation(False, None, f"{APPLY_PATCH_FAIL}: the patch does not apply\n")
        restore_test_files(tree, task["base_commit"], task.get("test_patch") or "")
        if not Environment.apply(tree, task.get("test_patch") or ""):
            return Evaluation(False, None, f"{APPLY_PATCH_FAIL}: the test patch does not apply\n")
        run = env.run_tests(tree, sorted({*fail_to_pass, *pass_to_pass}), backend=backend, timeout=timeout,
                            report_all=True)
    finally:
        Environment.discard(tree)
    marker = {"timeout": f"{TESTS_TIMEOUT}\n", "ok": ""}.get(run.status, f"{TESTS_ERROR}: {run.status}\n")
    code = f"{TEST_EXIT_CODE}: {run.exit_code}\n" if run.exit_code is not None else ""
    return Evaluation(True, run, f"{marker}{START_TEST_OUTPUT}\n{run.output}\n{END_TEST_OUTPUT}\n{code}")


def patched_paths(patch: str) -> list[str]:
    """The files a git diff touches (both sides of a rename)."""
    paths = set()
    for line in patch.splitlines():
        if line.startswith(("--- a/", "+++ b/")):
            paths.add(line[6:].split("\t")[0])
    return sorted(paths)


def restore_test_files(tree: Path, commit: str, test_patch: str) -> None:
    """The files the test patch touches as they were at ``commit`` (removed where they did not exist), whatever the
    model's patch did to them, as SWE-bench's evaluation script resets them before applying the test patch."""
    for path in patched_paths(test_patch):
        if Path(path).is_absolute() or ".." in Path(path).parts:
            continue  # git apply refuses such a patch anyway
        existed = subprocess.run(git_command(tree, "cat-file", "-e", f"{commit}:{path}"), capture_output=True,
                                 env=git_environment()).returncode == 0
        if existed:
            git(tree, "checkout", "-q", commit, "--", path)
        elif ((tree / path).is_file() or (tree / path).is_symlink()) and \
                (tree / path).parent.resolve() == tree.resolve() / Path(path).parent:  # never through a link
            (tree / path).unlink()


def instance_report(task: dict, patch: str | None, evaluation: Evaluation | None, *, as_logged: bool = True
                    ) -> dict:
    """SWE-bench's per-instance report (``report.json``): patch_is_None, patch_exists,
    patch_successfully_applied, resolved, tests_status (``as_logged``: see ``status_map``)."""
    report = {"patch_is_None": patch is None, "patch_exists": patch is not None,
              "patch_successfully_applied": False, "resolved": False}
    statuses = evaluation.statuses(as_logged=as_logged) if evaluation is not None else None
    if statuses is None:
        return {task["instance_id"]: report}
    tests = tests_report(statuses, *test_lists(task))
    report.update(patch_successfully_applied=True, resolved=resolution(tests) == FULL, tests_status=tests)
    return {task["instance_id"]: report}

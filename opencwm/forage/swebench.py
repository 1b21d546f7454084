"""SWE-bench instances in forager environments: importing them as SWE-bench's harness validates them, and grading
predictions as its harness does (the verdicts: ``opencwm.forage.verdicts``).

Import (``import_instances``): each instance's environment is its repository at its ``base_commit``, with the
repository's history (``build_environment(..., commit=)``, built once per repository and commit and cached). The
instance is validated as SWE-bench validates its data: with ``test_patch`` applied, every ``FAIL_TO_PASS`` test must
fail before the gold ``patch`` and pass after it, every ``PASS_TO_PASS`` test pass both times. Every instance gets a
row (``validated``, ``verdict``, ``reason``): one that cannot be built, applied or validated says why, and the
others are kept.

Grading (``grade``): each prediction's ``model_patch`` is run by ``verdicts.run_instance``; per instance its patch,
test log and report, and the run's totals with SWE-bench's fields.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from opencwm.errors import one_line
from opencwm.forage.environment import Environment, ForageError
from opencwm.forage.tasks import KIND, SCHEMA
from opencwm.forage.verdicts import (
    APPLY_PATCH_FAIL,
    instance_report,
    run_instance,
    test_failed,
    test_lists,
    test_passed,
)
from opencwm.shards import ShardWriter, read_rows

FIELDS = ("instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch", "FAIL_TO_PASS",
          "PASS_TO_PASS")
# SWE-bench's log markers and statuses (swebench.harness.constants)


def read_json_records(path: str | Path, what: str) -> list[dict]:
    """The records of a JSONL file, a JSON list or a JSON object keyed by instance id (as SWE-bench's harness takes
    predictions); one-line errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ForageError(f"{path}: cannot read it ({exc.strerror if isinstance(exc, OSError) else exc})") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        records = whole
    elif isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values()) \
            and "instance_id" not in whole:
        records = [{"instance_id": key, **value} for key, value in whole.items()]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ForageError(f"{path}:{number}: not JSON ({exc.msg})") from None
    if not records:
        raise ForageError(f"{path}: no {what} in it")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("instance_id"), str):
            raise ForageError(f"{path}: {what} {number} has no instance_id")
    return records


def read_instances(path: str | Path) -> list[dict]:
    """SWE-bench instances (JSONL or JSON), each checked for SWE-bench's fields."""
    instances = read_json_records(path, "instances")
    for instance in instances:
        missing = [f for f in FIELDS if f not in instance]
        if missing:
            raise ForageError(f"{path}: instance {instance['instance_id']} lacks {', '.join(missing)}")
        try:
            test_lists(instance)
        except (ValueError, json.JSONDecodeError) as exc:
            raise ForageError(f"{path}: instance {instance['instance_id']}: {one_line(str(exc), 200)}") from None
    return instances


def validate_instance(env: Environment, instance: dict, *, backend: str = "auto", timeout: float = 900
                      ) -> tuple[str, str]:
    """(verdict, reason) of SWE-bench's validation: FAIL_TO_PASS fail before the gold patch and pass after it,
    PASS_TO_PASS pass both times (the test patch applied both times). Verdicts: validated, invalid,
    test_patch_failed, patch_failed, error."""
    fail_to_pass, pass_to_pass = test_lists(instance)
    if not fail_to_pass:
        return "invalid", "no FAIL_TO_PASS tests"
    before = run_instance(env, instance, "", backend=backend, timeout=timeout)
    if not before.applied:
        return "test_patch_failed", "the test patch does not apply at base_commit"
    after = run_instance(env, instance, instance["patch"], backend=backend, timeout=timeout)
    if not after.applied:
        return "patch_failed", "the gold patch does not apply at base_commit"
    ahead, behind = before.statuses(), after.statuses()
    for name, evaluation, statuses in (("before", before, ahead), ("after", after, behind)):
        if statuses is None:
            run = evaluation.run
            last = next((line for line in reversed(run.output.splitlines()) if line.strip()), "no output")
            return "error", f"the run {name} the patch gave no test results ({run.status}: {one_line(last, 200)})"
    problems = []
    for label, cases, rule in (
            ("FAIL_TO_PASS passing before the patch", fail_to_pass, lambda c: not test_failed(c, ahead)),
            ("FAIL_TO_PASS not passing after the patch", fail_to_pass, lambda c: not test_passed(c, behind)),
            ("PASS_TO_PASS not passing before the patch", pass_to_pass, lambda c: not test_passed(c, ahead)),
            ("PASS_TO_PASS not passing after the patch", pass_to_pass, lambda c: not test_passed(c, behind))):
        bad = [c for c in cases if rule(c)]
        if bad:
            problems.append(f"{label}: {', '.join(bad[:3])}" + (f" (+{len(bad) - 3})" if len(bad) > 3 else ""))
    return ("invalid", "; ".join(problems)) if problems else ("validated", "")


def repository_for(instance: dict, repos: dict[str | None, Path]) -> Path | None:
    """The local git repository of an instance's ``repo`` (``owner/name``): given for that name, for its last part,
    or for every instance (key None)."""
    name = instance.get("repo") or ""
    for key in (name, name.rsplit("/", 1)[-1], None):
        if key in repos:
            return repos[key]
    return None


def import_instances(path: str | Path, repos: dict[str | None, Path], cache: str | Path, out: str | Path, *,
                     backend: str = "auto", timeout: float = 900, progress: Callable[[int, int], None] | None = None,
                     say: Callable[[str], None] | None = None) -> dict:
    """Import and validate SWE-bench instances into the task dataset ``out`` (resumable: instances with a row are
    not done again). Returns a summary: instances, validated, verdicts, and the reasons of the others."""
    from opencwm.forage.build import build_environment  # (building sits above using environments)

    instances = read_instances(path)
    with ShardWriter(out, SCHEMA, KIND, metadata={"source": str(path)}) as writer:
        done = writer.finished_items()
        todo = [i for i in instances if i["instance_id"] not in done]
        for count, instance in enumerate(todo, 1):
            start = time.monotonic()
            fail_to_pass, pass_to_pass = test_lists(instance)
            row = {"item": instance["instance_id"], **{k: instance[k] for k in FIELDS},
                   "FAIL_TO_PASS": json.dumps(fail_to_pass), "PASS_TO_PASS": json.dumps(pass_to_pass),
                   "task_kind": "issue-fix", "env": None, "operator": None, "file": None, "function": None,
                   "line": None, "bug_patch": "", "validated": False, "verdict": "", "reason": "",
                   "selected_tests": len(fail_to_pass) + len(pass_to_pass), "validation_seconds": 0.0}
            repository = repository_for(instance, repos)
            if repository is None:
                row.update(verdict="no_repository", reason=f"no local repository given for {instance['repo']}")
            else:
                try:
                    env = build_environment(str(repository), cache, commit=instance["base_commit"], backend=backend,
                                            progress=say)
                except ForageError as exc:
                    env, reason = None, str(exc)
                else:
                    reason = "" if env.ok else f"the environment did not build: {env.info.get('error')}"
                if env is None or not env.ok:
                    row.update(verdict="build_failed", reason=one_line(reason, 300),
                               env=str(env.path) if env else None)
                else:
                    try:
                        verdict, reason = validate_instance(env, instance, backend=backend, timeout=timeout)
                    except (ForageError, OSError) as exc:
                        verdict, reason = "error", one_line(str(exc) or type(exc).__name__, 300)
                    row.update(env=str(env.path), verdict=verdict, reason=reason, validated=verdict == "validated")
            row["validation_seconds"] = round(time.monotonic() - start, 3)
            writer.add(row["item"], [row])
            if progress:
                progress(count, len(todo))
    rows = [r for r in read_rows(out, columns=["item", "validated", "verdict", "reason"])]
    verdicts = Counter(r["verdict"] for r in rows)
    return {"tasks": str(out), "instances": len(rows), "validated": sum(bool(r["validated"]) for r in rows),
            "verdicts": dict(sorted(verdicts.items())),
            "not_validated": {r["item"]: f"{r['verdict']}: {r['reason']}" for r in rows if not r["validated"]}}


# -- grading predictions ------------------------------------------------------------------------------------------
def read_predictions(path: str | Path) -> dict[str, dict]:
    """SWE-bench predictions (``instance_id``, ``model_name_or_path``, ``model_patch``) by instance id."""
    predictions = {}
    for record in read_json_records(path, "predictions"):
        patch = record.get("model_patch")
        if patch is not None and not isinstance(patch, str):
            raise ForageError(f"{path}: the model_patch of {record['instance_id']} is not text")
        predictions[record["instance_id"]] = record
    return predictions


def folder_name(instance_id: str) -> str:
    """An instance's report directory name: its id with ``/`` as ``__`` (as SWE-bench names them), or a digest
    of it when that would not be a plain file name (``..``, a leading dot, other characters)."""
    name = instance_id.replace("/", "__")
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}", name):
        return name
    return f"instance-{hashlib.sha256(instance_id.encode()).hexdigest()[:16]}"


def _earlier_report(folder: Path, instance_id: str, patch: str | None) -> dict | None:
    """The report an earlier run wrote for this same patch, if it is there and readable."""
    try:
        if (folder / "patch.diff").read_text(encoding="utf-8") != (patch or ""):
            return None
        report = json.loads((folder / "report.json").read_text())[instance_id]
        (folder / "test_output.txt").stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if isinstance(report, dict) and "resolved" in report else None


def grade(predictions_path: str | Path, tasks: list[dict], out: str | Path, *, backend: str = "auto",
          timeout: float = 900, progress: Callable[[int, int], None] | None = None) -> dict:
    """Grade predictions on ``tasks`` (a task dataset's validated rows) as SWE-bench's harness does: per instance
    ``out/<instance_id>/`` holds ``patch.diff``, ``test_output.txt`` and ``report.json``; ``out/report.json`` the
    run's totals with SWE-bench's fields. Resumable: an instance graded before with the same patch is not run
    again."""
    predictions = read_predictions(predictions_path)
    by_id = {t["instance_id"]: t for t in tasks}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    environments: dict[str, Environment] = {}
    reports: dict[str, dict] = {}
    unapplied: set[str] = set()
    failures: dict[str, str] = {}  # instances that could not be graded at all (no report: tried again on a rerun)
    graded = [i for i in predictions if i in by_id]
    for count, instance_id in enumerate(graded, 1):
        task, patch = by_id[instance_id], predictions[instance_id].get("model_patch")
        folder = out / folder_name(instance_id)
        folder.mkdir(exist_ok=True)
        report = _earlier_report(folder, instance_id, patch)
        if report is None:
            evaluation = None
            try:
                if patch is not None:
                    if task["env"] not in environments:
                        environments[task["env"]] = Environment.open(task["env"])
                    evaluation = run_instance(environments[task["env"]], task, patch, backend=backend,
                                              timeout=timeout)
            except (ForageError, OSError) as exc:
                failures[instance_id] = one_line(str(exc) or type(exc).__name__, 300)
            else:
                report = instance_report(task, patch, evaluation)[instance_id]
                (folder / "patch.diff").write_text(patch or "", encoding="utf-8")
                (folder / "test_output.txt").write_text(evaluation.log if evaluation else "", encoding="utf-8")
                (folder / "report.json").write_text(json.dumps({instance_id: report}, indent=1))
        if report is not None:
            reports[instance_id] = report
            if patch and (folder / "test_output.txt").read_text(encoding="utf-8").startswith(APPLY_PATCH_FAIL):
                unapplied.add(instance_id)
        if progress:
            progress(count, len(graded))
    empty = sorted(i for i in graded if predictions[i].get("model_patch") in ("", None))
    # as SWE-bench's run report counts: a patch that does not apply is an error (its harness writes no report),
    # so is an instance that could not be run; a run that errored or timed out is completed and unresolved
    errors = sorted((unapplied | set(failures)) - set(empty))
    completed = sorted(i for i in graded if i not in empty and i not in errors)
    resolved = sorted(i for i in completed if reports[i]["resolved"])
    summary = {
        "total_instances": len(tasks), "submitted_instances": len(predictions),
        "completed_instances": len(completed), "resolved_instances": len(resolved),
        "unresolved_instances": len(completed) - len(resolved), "empty_patch_instances": len(empty),
        "error_instances": len(errors), "completed_ids": completed,
        "incomplete_ids": sorted(set(by_id) - set(graded)), "empty_patch_ids": empty,
        "submitted_ids": sorted(predictions), "resolved_ids": resolved,
        "unresolved_ids": sorted(set(completed) - set(resolved)), "error_ids": errors,
        "patch_apply_failed_ids": sorted(unapplied), "failure_reasons": dict(sorted(failures.items())),
        "unknown_ids": sorted(set(predictions) - set(by_id)),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    return summary

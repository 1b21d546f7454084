"""Tasks in SWE-bench's format (the task dataset: ``SCHEMA``, ``read_tasks``), and the validated mutate-fix bugs made
from an environment (issue-fix instances imported from SWE-bench data: ``opencwm.forage.swebench``).

A mutate-fix candidate is validated by running the tests that cover its function (from the environment's
coverage map, where a package's import-time code covers every test): it is kept when at least one of them that
passed now fails (``FAIL_TO_PASS``); the others that still pass are its ``PASS_TO_PASS``. The verdict is meant to
be the one the whole suite would give: a mutated statement that the baseline never executed (not at start-up,
collection or in any test) cannot change any outcome and is rejected without a run (``not_executed``); when
every covering test still passes and the statement is order-dependent (the tests that run it changed when the
baseline ran in reverse order: code run for whichever test comes first, such as a lazily built registry that
later tests read without running it), the whole suite decides. ``confirm="always"`` has the whole suite decide
whenever every covering test passes, ``"never"`` takes the covering tests' word. A kept bug is committed on top of
the baseline (``refs/opencwm/tasks/ID`` in the environment's repository), so the task's ``base_commit`` is the
broken tree and its ``patch`` is the fix, as in SWE-bench.

Every candidate gets a row (``verdict``: validated, no_test_failed, not_executed, timeout, error; ``reason``: why
it was not kept, for an error the end of the test run's output), so runs resume and report how many candidates
each operator produced, how many were kept and why the others were not; the tasks are the rows with
``validated = true``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from opencwm.errors import one_line
from opencwm.forage.environment import CONFIRM, Environment, ForageError, git
from opencwm.forage.mutate import OPERATORS, Mutation, mutations
from opencwm.forage.policies import PolicyUnavailable
from opencwm.forage.warm_runner import WarmRunner, stamp_mutation
from opencwm.shards import TASKS_KIND, ShardWriter, read_manifest, read_rows

KIND = TASKS_KIND
SCHEMA = pa.schema([
    ("item", pa.string()),
    ("instance_id", pa.string()),
    ("repo", pa.string()),
    ("base_commit", pa.string()),
    ("patch", pa.string()),  # the fix (SWE-bench's gold patch)
    ("test_patch", pa.string()),
    ("problem_statement", pa.string()),
    ("FAIL_TO_PASS", pa.string()),  # JSON lists of test node ids, as in SWE-bench's datasets
    ("PASS_TO_PASS", pa.string()),
    ("task_kind", pa.string()),  # mutate-fix | issue-fix
    ("env", pa.string()),  # the environment's directory
    ("operator", pa.string()),
    ("file", pa.string()),
    ("function", pa.string()),
    ("line", pa.int32()),
    ("bug_patch", pa.string()),  # baseline -> broken (mutate-fix)
    ("validated", pa.bool_()),
    ("verdict", pa.string()),
    ("reason", pa.string()),  # why a candidate was not kept (an error's last line of output, ...)
    ("selected_tests", pa.int32()),
    ("validation_seconds", pa.float64()),
])


@dataclass
class MutateReport:
    tasks: str
    candidates: int
    validated: int
    per_operator: dict[str, dict[str, int]]
    verdicts: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # candidates whose test run failed (verdict error or timeout): not a verdict on the mutation
    reasons: list[tuple[str, int]] = field(default_factory=list)  # the most common reasons of the errors

    def as_json(self) -> dict:
        return {"tasks": self.tasks, "candidates": self.candidates, "validated": self.validated,
                "errors": self.errors, "verdicts": self.verdicts,
                "reasons": [{"reason": reason, "count": count} for reason, count in self.reasons],
                "per_operator": self.per_operator}


def candidates(env: Environment, operators: tuple[str, ...] = OPERATORS) -> list[tuple[Mutation, list[str]]]:
    """Every mutation of every covered function, with the tests that cover it; in a fixed order that interleaves
    functions (so ``--max N`` samples the whole repository, not its first file)."""
    by_file: dict[str, set[str]] = {}
    for key in env.info.get("coverage", {}):
        path, function = key.split("::", 1)
        if env.tests_for(key):
            by_file.setdefault(path, set()).add(function)
    per_function: dict[str, list[tuple[Mutation, list[str]]]] = {}
    for path, functions in sorted(by_file.items()):
        source = (env.repo / path).read_text(encoding="utf-8")
        for mutation in mutations(source, path, functions, operators):
            key = f"{path}::{mutation.function}"
            per_function.setdefault(key, []).append((mutation, env.tests_for(key)))
    ordered, round_ = [], 0
    while any(round_ < len(items) for items in per_function.values()):
        ordered += [items[round_] for items in per_function.values() if round_ < len(items)]
        round_ += 1
    return ordered


def mutation_id(env: Environment, mutation: Mutation) -> str:
    digest = hashlib.sha256(f"{env.base_commit}\0{mutation.path}\0{mutation.mutated_source}".encode())
    return f"{env.info['key']}.mutate.{digest.hexdigest()[:10]}"


def problem_statement(mutation: Mutation, failing: list[str], failures: dict[str, str]) -> str:
    """A plain issue text from the failing tests' output; it names the symptoms, never the fix."""
    lines = ["Some tests fail on the current code.", "", "Failing tests:"]
    lines += [f"- {test}" for test in failing[:10]]
    if len(failing) > 10:
        lines.append(f"- ... and {len(failing) - 10} more")
    first = next((failures[t] for t in failing if failures.get(t)), "")
    if first:
        tail = "\n".join(first.strip().splitlines()[-25:])
        lines += ["", "Output of the first failing test:", "```", tail, "```"]
    lines += ["", "Please fix the code so that these tests pass, without changing the tests."]
    return "\n".join(lines)


ISSUE_PROMPT = """You are filing a bug report for a Python project. Some tests started failing after the change
below. Write a short issue text (a title line, then a few sentences) describing the symptom a user would see, as
a user who has not read the change would. Do not show or describe the change, do not propose a fix and do not say
which line is wrong.

The change that introduced the bug:
```diff
{bug}
```

{details}"""


def fix_lines(patch: str) -> list[str]:
    """The lines a fix adds, stripped (those of at least 4 characters with a letter or digit: a lone bracket is no
    leak): an issue text holding any of them leaks the fix."""
    added = [line[1:].strip() for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return [line for line in added if len(line) >= 4 and any(c.isalnum() for c in line)]


def policy_issue_text(writer, statement: str, patch: str, bug_patch: str = "") -> str | None:
    """An issue text written by a model (any ``Policy``) from the diff that introduced the bug and the failing
    tests' output, as SWE-smith writes them; None when the model fails or its text contains a line of the fix
    (``patch``): it must never leak the fix."""
    try:
        reply = writer([{"role": "user", "content": ISSUE_PROMPT.format(bug=bug_patch.strip(), details=statement)}])
        text = reply.text.strip()
    except PolicyUnavailable:  # no answer at all: the run stops, in one line, its finished rows kept
        raise
    except Exception:  # a refused or failed request: the plain description
        return None
    if not text or any(line in text for line in fix_lines(patch)):
        return None
    return text


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=32)
def _statements(source: str) -> tuple[tuple[int, ast.stmt], ...]:
    """Every statement of ``source`` with its first line (decorators included), parsed once per source text.
    Validation workers are threads, and CPython 3.11's ``ast.parse`` is not safe to run in several at once (it
    fails now and then with "AST constructor recursion depth mismatch", python/cpython#106905), hence the lock."""
    with _PARSE_LOCK:
        tree = ast.parse(source)
    return tuple((min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))]), node)
                 for node in ast.walk(tree) if isinstance(node, ast.stmt))


def statement_lines(source: str, line: int) -> range:
    """The lines whose execution would run the code at ``line``: those of the innermost statement holding it,
    only the header of a compound statement, and the decorators and ``def`` line for a decorator."""
    best = None
    for first, node in _statements(source):
        if first <= line <= node.end_lineno and (best is None or (best[0] <= first and node.end_lineno <= best[1])):
            best = (first, node.end_lineno, node)
    if best is None:
        return range(line, line + 1)
    first, last, node = best
    if line < node.lineno:  # in a decorator
        return range(first, node.lineno + 1)
    children = [child.lineno for field in ("body", "orelse", "finalbody", "handlers", "cases")
                for child in getattr(node, field, None) or () if hasattr(child, "lineno")]
    header_end = min(children, default=last + 1) - 1
    return range(node.lineno, max(node.lineno, header_end) + 1)


def validate(env: Environment, tree: Path, mutation: Mutation, tests: list[str] | None, *, timeout: float = 120,
             backend: str = "auto", issue_writer=None, server: WarmRunner | None = None,
             prescreen: bool = True, confirm: str = "order-dependent") -> dict:
    """Run ``tests`` (the covering tests; None: the whole suite, judged on every passing test) on the mutated
    tree; returns the candidate's row (committing the bug when it is kept). With a ``server`` (a warm
    ``WarmRunner`` of this tree) the tests run there, otherwise in a fresh sandboxed pytest. The verdict is the
    whole suite's (see the module docstring); ``prescreen=False`` runs the tests even for a statement the
    baseline never executed (the benchmark's reference does); ``confirm`` (one of ``CONFIRM``) says when the
    whole suite decides for a mutation that every covering test passes."""
    if confirm not in CONFIRM:
        raise ValueError(f"confirm must be one of {', '.join(CONFIRM)}, not {confirm!r}")
    start = time.monotonic()
    instance_id = mutation_id(env, mutation)
    row = {"item": instance_id, "instance_id": instance_id, "repo": env.info.get("distribution") or env.info["key"],
           "base_commit": "", "patch": "", "test_patch": "", "problem_statement": "", "FAIL_TO_PASS": "[]",
           "PASS_TO_PASS": "[]", "task_kind": "mutate-fix", "env": str(env.path), "operator": mutation.operator,
           "file": mutation.path, "function": mutation.function, "line": mutation.line, "bug_patch": "",
           "validated": False, "verdict": "", "reason": "", "selected_tests": 0, "validation_seconds": 0.0}
    lines = statement_lines((env.repo / mutation.path).read_text(encoding="utf-8"), mutation.line)
    if prescreen and env.ever_executed(mutation.path, lines) is False:
        row.update(verdict="not_executed", reason=f"the baseline never ran line {mutation.line}")
        return row
    Environment.reset(tree, env.base_commit)
    (tree / mutation.path).write_text(mutation.mutated_source, encoding="utf-8")
    stamp_mutation(tree / mutation.path)

    def run_tests(chosen):
        return server.run(chosen, timeout=timeout) if server is not None else \
            env.run_tests(tree, chosen, timeout=timeout, backend=backend)

    run = run_tests(tests)
    all_pass = tests is not None and run.status == "ok" and run.outcomes and all(map(run.passed, tests))
    if all_pass and (confirm == "always" or (confirm == "order-dependent"
                                             and env.order_dependent(mutation.path, lines) is not False)):
        tests, run = None, run_tests(None)  # every covering test passes: the whole suite decides
    tests = tests if tests is not None else env.passing_tests()
    row.update(selected_tests=len(tests), validation_seconds=round(time.monotonic() - start, 3))
    if run.status != "ok" or not run.outcomes:
        row.update(verdict="timeout" if run.status == "timeout" else "error", reason=run_failure(run, timeout))
        return row
    failing = [t for t in tests if not run.passed(t)]
    if not failing:
        row.update(verdict="no_test_failed", reason=f"all {len(tests)} tests still pass")
        return row
    git(tree, "add", "-A")
    row["bug_patch"] = git(tree, "diff", "--cached", env.base_commit)
    git(tree, "commit", "-q", "-m", f"mutate-fix task {instance_id}", "--no-verify")
    broken = git(tree, "rev-parse", "HEAD").strip()
    git(tree, "push", "-q", "origin", f"{broken}:refs/opencwm/tasks/{instance_id}")
    fix = git(tree, "diff", broken, env.base_commit)
    statement = problem_statement(mutation, failing, run.failures)
    if issue_writer is not None:
        statement = policy_issue_text(issue_writer, statement, fix, row["bug_patch"]) or statement
    row.update(base_commit=broken, patch=fix, problem_statement=statement,
               FAIL_TO_PASS=json.dumps(failing), PASS_TO_PASS=json.dumps([t for t in tests if t not in failing]),
               validated=True, verdict="validated")
    return row


def mutate(env: Environment, out: str | Path, *, max_candidates: int | None = None, workers: int = 2,
           operators: tuple[str, ...] = OPERATORS, timeout: float = 120, backend: str = "auto",
           progress: Callable[[int, int], None] | None = None, issue_writer=None,
           confirm: str = "order-dependent") -> MutateReport:
    """Generate, validate and store mutate-fix tasks of ``env`` in the dataset ``out`` (resumable). With an
    ``issue_writer`` (a policy), issue texts are written by that model from the failing tests' output (falling
    back to the plain description when its text would leak the fix)."""
    if not env.ok:
        raise ForageError(f"{env.path}: the environment did not build ({env.info.get('error')})")
    chosen = candidates(env, operators)[:max_candidates]
    with ShardWriter(out, SCHEMA, KIND, rows_per_shard=500, metadata={"env": str(env.path)}) as writer:
        done = writer.finished_items()
        todo = [(m, tests) for m, tests in chosen if mutation_id(env, m) not in done]
        trees: queue.Queue = queue.Queue()  # (work tree, its warm test server or None), one per worker
        for _ in range(max(1, workers)):
            tree = env.checkout(parent=env.path / "work")
            trees.put((tree, None if backend == "docker" else WarmRunner(env, tree, backend=backend)))

        def work(item):
            tree, server = trees.get()
            try:
                return validate(env, tree, *item, timeout=timeout, backend=backend, issue_writer=issue_writer,
                                server=server, confirm=confirm)
            finally:
                trees.put((tree, server))

        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for count, row in enumerate(pool.map(work, todo), 1):
                    writer.add(row["item"], [row])
                    if progress:
                        progress(count, len(todo))
        finally:
            while not trees.empty():
                tree, server = trees.get()
                if server is not None:
                    server.close()
                Environment.discard(tree)
    return summarize(out)


def run_failure(run, timeout: float) -> str:
    """One line saying why a test run gave no verdict: its status and the last line of its output."""
    if run.status == "timeout":
        return f"the tests ran past {timeout:g} s"
    last = next((line.strip() for line in reversed(run.output.splitlines()) if line.strip()), "no output")
    return f"{run.status}: {one_line(last, 300)}"


def summarize(out: str | Path) -> MutateReport:
    per: dict[str, Counter] = {}
    verdicts: Counter = Counter()
    reasons: Counter = Counter()
    for row in read_rows(out, columns=["operator", "validated", "verdict", "reason"]):
        counter = per.setdefault(row["operator"] or "issue-fix", Counter())
        counter["candidates"] += 1
        counter["validated"] += bool(row["validated"])
        verdicts[row["verdict"]] += 1
        if row["verdict"] in ("error", "timeout"):
            reasons[row["reason"]] += 1
    per_operator = {op: dict(c) for op, c in sorted(per.items())}
    return MutateReport(str(out), sum(c["candidates"] for c in per.values()),
                        sum(c["validated"] for c in per.values()), per_operator, dict(sorted(verdicts.items())),
                        verdicts["error"] + verdicts["timeout"], reasons.most_common(3))


def read_tasks(directory: str | Path) -> list[dict]:
    """The validated tasks of a dataset, in SWE-bench's format (plus opencwm's columns)."""
    if read_manifest(directory).get("kind") != KIND:
        raise ForageError(f"{directory}: not a task dataset (made by 'opencwm forage mutate' or 'forage import')")
    return [row for row in read_rows(directory) if row["validated"]]

"""SWE-bench-style evaluation: agentic episodes on forager tasks (mutate-fix tasks and imported SWE-bench
instances, each in its executable environment), with CWM's tools and limits, graded by the task's
``FAIL_TO_PASS`` and ``PASS_TO_PASS`` tests through the forager's grader.

The model acts through the one completion interface (``opencwm.forage.policies.CompleterPolicy``: the conversation in
CWM's chat format, reasoning mode by default, one completion per turn up to the end of the turn), so a local
checkpoint and a served model are evaluated alike. Defaults are CWM's agentic limits: 128 turns, a 131,072-token
context, 120 s per command.

Test-time scaling (``tts`` = K, as CWM does for its 65.8%): K episodes per task at the sampling temperature give K
candidate patches; each distinct patch is applied to a fresh work tree and run against the repository's own tests
(those that passed before the task's change, none of the hidden ``FAIL_TO_PASS`` tests of an imported instance);
the patch passing most of them is chosen, ties going to the patch most candidates share (majority over identical
diffs), and only the chosen patch is graded. Tests the model writes count too, as in CWM: one more episode per
task asks the model for a test file that fails on the current code and passes once the problem is fixed; the new
test files it creates run with each candidate (``model_tests=False`` leaves them out). The summary reports pass@1
over all K episodes, pass@K, and ``tts@K``, the chosen patches' rate.

A run directory has the harness's layout (``settings.json``, ``results.jsonl``, ``summary.json``, so ``eval
report`` reads it), and ``episodes/``, the trajectories, which a rerun goes on from.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from opencwm.eval.harness import RESULTS, SUMMARY, Sampling, check_settings, read_rows, summarize
from opencwm.eval.passk import interval, mean
from opencwm.forage.agent import EpisodeBudget
from opencwm.forage.environment import Environment
from opencwm.forage.policies import CompleterPolicy
from opencwm.infer.completer import Completer

CWM_BUDGET = EpisodeBudget(max_turns=128, max_tokens=131_072, max_seconds=3600.0, command_timeout=120.0)
REPORTED = {"pass@1": 53.9, "tts@": 65.8}  # SWE-bench Verified; tts: CWM's test-time scaling


TEST_REQUEST = """Do not fix this problem yet: write a test for it. Create one new pytest file (its name starting \
with test_, beside the repository's own tests) whose tests fail on the current code and will pass once the problem \
is fixed. Change no other file, then submit.

The problem:

{statement}"""
_TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")


def new_test_files(diff: str) -> tuple[str, list[str]]:
    """The part of ``diff`` that creates test files (``test_*.py``, ``*_test.py``), and their paths."""
    kept, paths = [], []
    for block in re.split(r"(?m)^(?=diff --git )", diff):
        header = re.match(r"diff --git a/(\S+) b/(\S+)\n", block)
        if header and "\nnew file mode" in block.split("@@", 1)[0] and _TEST_FILE.search(header.group(2)):
            kept.append(block)
            paths.append(header.group(2))
    return "".join(kept), paths


def _request(sampling: Sampling) -> dict:
    return {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p}


def repository_test_score(env: Environment, task: dict, patch: str, *, model_tests: tuple[str, list[str]] = ("", []),
                          backend: str = "auto") -> int:
    """How many of the repository's own tests (those passing before the task), and of the tests the model wrote
    (``model_tests``: the patch creating them and their files), pass with ``patch`` applied; -1 for a patch that
    does not apply."""
    tree = env.checkout(task["base_commit"])
    try:
        if not Environment.apply(tree, patch):
            return -1
        tests_patch, test_files = model_tests
        extra = test_files if tests_patch and Environment.apply(tree, tests_patch) else []
        run = env.run_tests(tree, env.passing_tests() + extra, backend=backend)
        return sum(outcome == "passed" for outcome in run.outcomes.values())
    finally:
        Environment.discard(tree)


def choose_patch(diffs: list[str], score) -> int:
    """The index of the candidate to submit: most repository tests passed, then most candidates sharing the
    diff, then the first; ``score(diff)`` is called once per distinct diff."""
    counts = Counter(diffs)
    scores = {diff: score(diff) for diff in counts}
    best = max(counts, key=lambda diff: (scores[diff], counts[diff], -diffs.index(diff)))
    return diffs.index(best)


def run_swe(tasks: list[dict], completer: Completer, out: Path, *, model: str, sampling: Sampling,
            budget: EpisodeBudget = CWM_BUDGET, tts: int = 1, think: bool = True, workers: int = 1,
            backend: str = "auto", progress=None, model_tests: bool = True) -> dict:
    """Plays ``max(1, tts)`` episodes of the model on each task into ``out`` (resumable) and grades them; the
    summary."""
    from opencwm.forage.agent import evaluate_patch
    from opencwm.forage.trajectory import read_trajectories, run_episodes

    candidates = max(1, tts)
    settings = {"benchmark": "swe", "model": model, **vars(sampling), "samples": candidates, "tts": tts,
                "think": think, "budget": asdict(budget), "tasks": len(tasks), "workers": workers, "limit": None,
                "model_tests": model_tests and tts > 1}
    check_settings(out, settings)
    episodes = out / "episodes"
    for k in range(candidates):
        seed = None if sampling.seed is None else sampling.seed + k
        policy = CompleterPolicy(completer, name=f"{model}#{k}", think=think, seed=seed, **_request(sampling))
        run_episodes(tasks, lambda task, policy=policy: policy, episodes, budget=budget, workers=workers,
                     backend=backend, progress=progress)
    if model_tests and tts > 1:  # one episode per task in which the model writes tests
        seed = None if sampling.seed is None else sampling.seed + candidates
        writer = CompleterPolicy(completer, name=f"{model}#tests", think=think, seed=seed, **_request(sampling))
        requests = [{**task, "problem_statement": TEST_REQUEST.format(statement=task["problem_statement"])}
                    for task in tasks]
        run_episodes(requests, lambda task: writer, episodes, budget=budget, workers=workers, backend=backend,
                     progress=progress)
    by_task: dict[str, dict] = {}
    for trajectory in read_trajectories(episodes):
        which = trajectory["policy"].rsplit("#", 1)[1]
        by_task.setdefault(trajectory["task_id"], {})[int(which) if which.isdigit() else which] = trajectory
    results = out / RESULTS
    done = {row["id"] for row in read_rows(results)}
    with open(results, "a", encoding="utf-8") as handle:
        for task in tasks:
            ident = task["instance_id"]
            if ident in done:
                continue
            played = [by_task[ident][k] for k in range(candidates)]
            row = {"id": ident, "prompt": task["problem_statement"], "completions": [t["diff"] for t in played],
                   "answers": [t["diff"] for t in played], "passed": [bool(t["solved"]) for t in played],
                   "reasons": ["" if t["solved"] else t["status"] for t in played],
                   "tokens": [int(t["completion_tokens"]) for t in played],
                   "seconds": round(sum(t["episode_seconds"] for t in played), 3), "grade_seconds": 0.0}
            if tts > 1:
                env = Environment.open(Path(task["env"]))
                written = by_task[ident].get("tests")
                tests = new_test_files(written["diff"]) if written else ("", [])
                scores: dict[str, int] = {}

                def score(diff: str, env=env, task=task, tests=tests, scores=scores) -> int:
                    scores[diff] = repository_test_score(env, task, diff, model_tests=tests, backend=backend)
                    return scores[diff]

                chosen = choose_patch(row["answers"], score)
                reward, _ = evaluate_patch(env, task, row["answers"][chosen], backend=backend)
                row.update(chosen=chosen, tts_passed=reward == 1.0, model_tests=tests[1],
                           scores=[scores[diff] for diff in row["answers"]])
            handle.write(json.dumps(row) + "\n")
            handle.flush()
    order = {task["instance_id"]: i for i, task in enumerate(tasks)}
    rows = sorted((r for r in read_rows(results) if r["id"] in order), key=lambda r: order[r["id"]])
    summary = {"benchmark": "swe", "model": model, **summarize(rows, sorted({1, candidates}))}
    if tts > 1 and rows:
        values = [float(row["tts_passed"]) for row in rows]
        summary[f"tts@{tts}"], summary[f"tts@{tts}_interval"] = mean(values), interval(values)
    reported = {"pass@1": REPORTED["pass@1"]} | ({f"tts@{tts}": REPORTED["tts@"]} if tts > 1 else {})
    summary.update(settings=settings, reported=reported)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary

"""Real-world check of the forager (make test-slow): three pure-Python packages from PyPI that ship their tests.
Environments build, baselines record, mutate-fix yields validated tasks whose verdicts the real pytest confirms,
the inverse-mutation policy solves every one, and empty or unrelated submissions solve none."""

from __future__ import annotations

import json
import subprocess

import pytest

from opencwm.chat import format_edit, format_tool_call
from opencwm.forage.build import build_environment
from opencwm.forage.environment import Environment
from opencwm.forage.policies import InverseMutationPolicy, ScriptedPolicy
from opencwm.forage.tasks import mutate, read_tasks
from opencwm.forage.trajectory import run_episodes

PACKAGES = ("six==1.16.0", "toolz==1.0.0", "inflection==0.5.1")


def _named(name: str, turns: list[str]):
    def make(task):
        policy = ScriptedPolicy(turns)
        policy.name = name
        return policy

    return make


def _real_outcome(env: Environment, tree, test: str) -> bool:
    """The test's verdict from the environment's pytest run directly, outside opencwm's sandbox and plugin."""
    argv = [str(env.venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    environment = {**env.sandbox_env(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(argv, cwd=tree, capture_output=True, env=environment)
    return result.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", PACKAGES)
def test_real_package_gives_validated_solvable_tasks(spec, tmp_path):
    env = build_environment(spec, tmp_path / "envs")
    if not env.ok and "could not download" in env.info.get("error", ""):
        pytest.skip(f"PyPI unreachable: {env.info['error']}")
    assert env.ok, env.info.get("error")
    assert len(env.info["tests"]) >= 50 and env.info["passing"] >= 0.9 * len(env.info["tests"])
    assert env.info["coverage"], "no function is covered by any test"

    report = mutate(env, tmp_path / "tasks", max_candidates=30, workers=2)
    print(spec, json.dumps(report.as_json()))
    assert report.candidates == 30 and report.validated >= 5
    assert sum(c["candidates"] for c in report.per_operator.values()) == 30
    tasks = read_tasks(tmp_path / "tasks")

    for task in tasks[:3]:  # the verdicts hold under the real pytest, outside the sandbox
        tree = env.checkout(task["base_commit"])
        try:
            assert not _real_outcome(env, tree, json.loads(task["FAIL_TO_PASS"])[0])
            subprocess.run(["git", "-C", str(tree), "apply", "-"], input=task["patch"], text=True, check=True)
            assert _real_outcome(env, tree, json.loads(task["FAIL_TO_PASS"])[0])
        finally:
            Environment.discard(tree)

    solved = run_episodes(tasks, InverseMutationPolicy, tmp_path / "inverse", workers=2)
    assert solved["episodes"] == len(tasks) and solved["solved"] == len(tasks)
    assert run_episodes(tasks, _named("empty", []), tmp_path / "empty", workers=2)["solved"] == 0
    readme = next(p for p in ("README.rst", "README.md", "README") if (env.repo / p).exists())
    first_line = (env.repo / readme).read_text().splitlines()[0]
    unrelated = _named("unrelated", [format_tool_call("edit", format_edit(readme, [(first_line, first_line + "!")]))])
    assert run_episodes(tasks, unrelated, tmp_path / "unrelated", workers=2)["solved"] == 0

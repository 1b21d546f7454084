"""The README is a contract: every command of its shell blocks runs as written (relative paths included), in the
README's order, from a fresh directory laid out like a checkout (``examples/`` and ``.venv/`` linked in, and the
user's own files the README names made here). The quick commands run in ``make test``; training, the Ray and
3.13 collections and the forager on a real PyPI package in ``make test-slow``. A command the table below does not
know fails the suite, and so does an entry no longer in the README."""

from __future__ import annotations

import pytest
from readme_contract import COMMANDS, FAST, REPO, name, readme_commands, walkthrough


def test_every_readme_command_is_known_and_every_entry_is_in_the_readme():
    commands = [name(c) for c in readme_commands((REPO / "README.md").read_text())]
    assert [c for c in commands if c not in COMMANDS] == [], "README commands this test does not run"
    assert [c for c in COMMANDS if c not in commands] == [], "entries no longer in the README"
    assert all(step.tier or step.why.startswith("not run: ") for step in COMMANDS.values())


def test_the_quick_readme_commands_run_as_written(tmp_path):
    walkthrough(tmp_path, {FAST})


@pytest.mark.slow
def test_every_readme_command_runs_as_written(readme_walkthrough):
    """The whole walkthrough (the session's ``readme_walkthrough`` fixture, which runs it once)."""
    _, failure = readme_walkthrough
    if failure is not None:
        raise failure

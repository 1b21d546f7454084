"""Mutation operators: each one yields compiling code that behaves differently from the original under the real
interpreter, changes only its own function, and is undone exactly by the inverse edit of its diff."""

from __future__ import annotations

import difflib

import pytest

from opencwm.chat import format_edit, parse_edit
from opencwm.forage.mutate import OPERATORS, mutations
from opencwm.forage.policies import inverse_edits

SOURCE = '''"""A module."""


def score(values, limit):
    """Docstring."""
    total = 0
    for value in values:
        if value < limit and value != 3:
            total += value * 2
        elif value in (7, 8):
            total -= 1
    done = True
    return total if done else -total


def untouched():
    return 42
'''


def _run(source: str):
    namespace: dict = {}
    exec(compile(source, "m.py", "exec"), namespace)
    try:
        return [namespace["score"](values, 5) for values in ([1, 2, 3, 4], [7, 9, 5], [0, 6, 8, 4], [])]
    except Exception as exc:  # a mutation may raise: that is a behaviour too
        return type(exc).__name__


@pytest.mark.parametrize("operator", OPERATORS)
def test_every_operator_applies(operator):
    found = mutations(SOURCE, "m.py", {"score"}, (operator,))
    assert found, operator
    for mutation in found:
        assert mutation.operator == operator and mutation.function == "score"
        changed = [n for n, (a, b) in enumerate(zip(SOURCE.splitlines(), mutation.mutated_source.splitlines()), 1)
                   if a != b]
        assert changed and all(4 <= n <= 13 for n in changed)  # inside score, nowhere else
        assert "return 42" in mutation.mutated_source and '"""Docstring."""' in mutation.mutated_source
    assert any(_run(m.mutated_source) != _run(SOURCE) for m in found)


def test_no_duplicates_and_functions_filter():
    found = mutations(SOURCE, "m.py")
    assert len({m.mutated_source for m in found}) == len(found)
    assert {m.function for m in found} == {"score", "untouched"}
    assert not mutations(SOURCE, "m.py", {"nothing"})


def test_inverse_edit_restores_the_original():
    for mutation in mutations(SOURCE, "m.py"):
        diff = "".join(difflib.unified_diff(SOURCE.splitlines(True), mutation.mutated_source.splitlines(True),
                                            "a/m.py", "b/m.py"))
        [(path, blocks)] = inverse_edits(diff)
        assert path == "m.py"
        _, parsed = parse_edit(format_edit(path, blocks))
        text = mutation.mutated_source
        for old, new in parsed:
            assert text.count(old) == 1
            text = text.replace(old, new, 1)
        assert text == SOURCE

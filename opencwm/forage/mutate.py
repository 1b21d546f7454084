"""Mutation operators: small bugs injected into a function's syntax tree, written back as a minimal text edit
(only the mutated node's source span changes, so the bug's diff is one or two lines and the rest of the file,
comments included, stays as it was).

Operators: ``compare`` (``<`` <-> ``<=``, ``==`` <-> ``!=``, ``in`` <-> ``not in``, ...), ``arithmetic`` (``+``
<-> ``-``, ``*`` -> ``+``, ``/`` -> ``*``, ``//`` -> ``/``, ``%`` -> ``//``, also in augmented assignments),
``off_by_one`` (an integer constant n -> n + 1 and n - 1), ``negate_condition`` (the test of an ``if``,
``while`` or conditional expression), ``boolean`` (``and`` <-> ``or``, ``True`` <-> ``False``),
``remove_statement`` (a simple statement becomes ``pass``), ``return_value`` (``return X`` -> ``return None``),
``wrong_variable`` (a variable read replaced by another local of the same function).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

OPERATORS = ("compare", "arithmetic", "off_by_one", "negate_condition", "boolean", "remove_statement",
             "return_value", "wrong_variable")
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv}
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)


@dataclass(frozen=True)
class Mutation:
    operator: str
    path: str  # relative to the repository
    function: str  # qualified name
    line: int
    original: str  # the source segment that changed
    replacement: str
    mutated_source: str  # the whole file after the change

    @property
    def description(self) -> str:
        return f"{self.path}:{self.line} {self.operator}: {self.original!r} -> {self.replacement!r}"


def _replace_span(source: str, node: ast.AST, text: str) -> str:
    """``source`` with ``node``'s span replaced (ast columns are UTF-8 byte offsets)."""
    lines = source.encode().splitlines(keepends=True)
    start = sum(len(line) for line in lines[: node.lineno - 1]) + node.col_offset
    end = sum(len(line) for line in lines[: node.end_lineno - 1]) + node.end_col_offset
    data = source.encode()
    return (data[:start] + text.encode() + data[end:]).decode()


def _locals(function: ast.AST) -> list[str]:
    names = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    names |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return sorted(names)


def _own_nodes(function: ast.AST) -> Iterator[ast.AST]:
    """Nodes of ``function``'s body, not descending into nested functions or classes (they mutate on their own)."""
    stack = list(reversed(function.body))
    while stack:
        node = stack.pop()
        yield node
        for child in reversed(list(ast.iter_child_nodes(node))):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.append(child)


def _is_docstring(node: ast.AST, function: ast.AST) -> bool:
    return (node is function.body[0] and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _edits(function: ast.AST, source: str) -> Iterator[tuple[str, ast.AST, str]]:
    """(operator, node whose span changes, replacement text) for every mutation of ``function``."""
    names = _locals(function)
    segment = lambda node: ast.get_source_segment(source, node) or ast.unparse(node)
    for node in _own_nodes(function):
        if isinstance(node, ast.Compare):
            for index, op in enumerate(node.ops):
                if type(op) in _COMPARE:
                    ops = list(node.ops)
                    ops[index] = _COMPARE[type(op)]()
                    yield "compare", node, ast.unparse(ast.Compare(node.left, ops, node.comparators))
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            new = ast.BinOp(node.left, _ARITHMETIC[type(node.op)](), node.right)
            yield "arithmetic", node, ast.unparse(new)
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITHMETIC and node.lineno == node.end_lineno:
            yield "arithmetic", node, ast.unparse(ast.AugAssign(node.target, _ARITHMETIC[type(node.op)](),
                                                                node.value))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):
                yield "off_by_one", node, str(node.value + delta)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield "boolean", node, str(not node.value)
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield "boolean", node, ast.unparse(ast.BoolOp(other, node.values))
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            yield "negate_condition", node.test, f"not ({segment(node.test)})"
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return_value", node, "return None"
        if isinstance(node, _SIMPLE) and not _is_docstring(node, function):
            yield "remove_statement", node, "pass"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names and len(names) > 1:
            others = [n for n in names if n != node.id]
            yield "wrong_variable", node, others[(names.index(node.id)) % len(others)]


def functions(module: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function in ``module``, methods and nested functions included."""
    for child in ast.iter_child_nodes(module):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            yield name, child
            yield from functions(child, f"{name}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")


def mutations(source: str, path: str, functions_wanted: set[str] | None = None,
              operators: tuple[str, ...] = OPERATORS) -> list[Mutation]:
    """Every mutation of the functions of ``source`` (all, or those whose qualified names are in
    ``functions_wanted``)
    that still compiles; duplicates (same resulting file) removed."""
    seen, out = set(), []
    for name, function in functions(ast.parse(source)):
        if functions_wanted is not None and name not in functions_wanted:
            continue
        for operator, target, text in _edits(function, source):
            if operator not in operators:
                continue
            mutated = _replace_span(source, target, text)
            if mutated == source or mutated in seen:
                continue
            try:
                compile(mutated, path, "exec")
            except (SyntaxError, ValueError):
                continue
            seen.add(mutated)
            original = ast.get_source_segment(source, target) or ""
            out.append(Mutation(operator, path, name, target.lineno, original, text, mutated))
    return out

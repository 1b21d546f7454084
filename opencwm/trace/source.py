"""Static facts about a traced source file: which code objects to trace and which line each step names.

Two rules make traces identical across CPython 3.11-3.13 (whose line events differ in detail):

- Every physical line is attributed to the first line of the statement that contains it (for compound
  statements, to the first line of their header). A multi-line expression therefore shows as one step, named by
  the statement's first line, whichever continuation line the interpreter reports.
- Comprehensions and generator expressions are atomic expressions of the line that holds them, like a builtin
  call: their code objects (separate scopes on 3.11, inlined on 3.12+ for list/set/dict comprehensions) are
  never stepped into. Functions of the traced source that they call are still stepped into.
"""

from __future__ import annotations

import ast
import inspect
import types

START_MARKER = "  # << START_OF_TRACE"
_HIDDEN_SCOPES = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})


def is_traced_scope(code: types.CodeType) -> bool:
    """Functions, methods, lambdas and generators are stepped into; module and class bodies and comprehensions
    are not."""
    return bool(code.co_flags & inspect.CO_OPTIMIZED) and code.co_name not in _HIDDEN_SCOPES


class SourceMap:
    """Maps line numbers of one source text to statement lines, their text, and functions to their ``def`` lines."""

    def __init__(self, source: str, tree: ast.AST | None = None):
        self.source = source
        self.lines = source.splitlines()
        tree = tree if tree is not None else ast.parse(source)
        self.statement_of: dict[int, int] = {}
        self.def_line_of: dict[int, int] = {}  # a function's first line (its first decorator) -> its def line
        self._functions: dict[tuple[int, str], ast.AST] = {}  # (first line, name) -> def node
        self._name_ranks: dict[types.CodeType, dict[str, int]] = {}
        self._visit(tree)

    def _visit(self, tree: ast.AST) -> None:
        # Only statements are visited (never expressions), outer before inner so that inner statements overwrite
        # the lines of the compound statement around them.
        pending = list(getattr(tree, "body", []))
        while pending:
            node = pending.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                self.def_line_of.setdefault(first, node.lineno)
                self.def_line_of.setdefault(node.lineno, node.lineno)
                self._functions.setdefault((first, node.name), node)
            children = []
            for name in ("body", "orelse", "finalbody"):
                block = getattr(node, name, None)
                if isinstance(block, list):
                    children.extend(block)
            for clause in getattr(node, "handlers", None) or getattr(node, "cases", None) or ():
                children.extend(clause.body)
            header_end = self._header_end(node) if children else (node.end_lineno or node.lineno)
            for lineno in range(node.lineno, header_end + 1):
                self.statement_of[lineno] = node.lineno
            pending.extend(children)

    @staticmethod
    def _header_end(node: ast.stmt) -> int:
        """Last line of a compound statement's header: the line before its first body statement (or decorator)."""
        if not node.body:
            return node.lineno
        first_body = node.body[0]
        start = first_body.lineno
        decorators = getattr(first_body, "decorator_list", None)
        if decorators:
            start = min(start, decorators[0].lineno)
        return max(node.lineno, start - 1) if start > node.lineno else node.lineno

    def statement_line(self, lineno: int) -> int:
        return self.statement_of.get(lineno, lineno)

    def text(self, lineno: int) -> str:
        return self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""

    def def_line(self, code: types.CodeType) -> int:
        return self.def_line_of.get(code.co_firstlineno, code.co_firstlineno)

    def name_rank(self, code: types.CodeType) -> dict[str, int]:
        """Order in which a function's local names first occur in its source (parameters first).

        Locals are listed in the order they were first bound; names bound in the same step are ordered by this
        rank, which (unlike ``co_varnames``) does not depend on the Python version.
        """
        ranks = self._name_ranks.get(code)
        if ranks is None:
            node = self._functions.get((code.co_firstlineno, code.co_name))
            # Lambdas bind only their parameters, which lead co_varnames in every version.
            names = _names_in_order(node) if node else code.co_varnames
            ranks = self._name_ranks[code] = {name: i for i, name in enumerate(names)}
        return ranks


def mark_entry(source: str, entry_lineno: int) -> str:
    """The source as the trace context shows it: the entry function's def line carries START_MARKER."""
    lines = source.split("\n")
    if 0 < entry_lineno <= len(lines):
        lines[entry_lineno - 1] += START_MARKER
    return "\n".join(lines)


def unmark_entry(context: str) -> tuple[str, int]:
    """Inverse of ``mark_entry``: the plain source and the marked line (0 when no line is marked)."""
    lines = context.split("\n")
    for index, line in enumerate(lines):
        if line.endswith(START_MARKER):
            lines[index] = line[: -len(START_MARKER)]
            return "\n".join(lines), index + 1
    return context, 0


_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _names_in_order(function: ast.AST) -> list[str]:
    seen: dict[str, None] = {}
    args = function.args
    for arg in [*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg]:
        if arg is not None:
            seen.setdefault(arg.arg)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Name):
                seen.setdefault(child.id)
            elif isinstance(child, _NESTED_SCOPES):
                if not isinstance(child, ast.Lambda):
                    seen.setdefault(child.name)
            elif isinstance(child, _COMPREHENSIONS):
                visit(child.generators[0].iter)  # the only part evaluated in this scope
            elif isinstance(child, ast.ExceptHandler) and child.name:
                seen.setdefault(child.name)
                visit(child)
            else:
                visit(child)

    body = function.body if isinstance(function.body, list) else [function.body]
    for statement in body:
        if isinstance(statement, ast.Name):
            seen.setdefault(statement.id)
        else:
            visit(statement)
    return list(seen)

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
import bisect
import inspect
import re
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
        self.texts: dict[int, str] = dict(enumerate(self.lines, 1))  # line -> its text
        self._line_offsets: list[int] | None = None
        self._word_offsets: dict[str, list[int]] | None = None  # word -> where it stands alone, in order
        self._code_caches: dict[str, dict] = {}
        self._line_cache = None  # the C tracer's per-line lookups, shared by the traces of this map
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
        return self.texts.get(lineno, "")

    def code_cache(self, filename: str) -> dict:
        """A dict the tracer fills with what it decided per code object of ``filename`` (whether and where it is
        stepped into); it lives as long as the map, so a program traced many times decides once."""
        return self._code_caches.setdefault(filename, {})

    def def_line(self, code: types.CodeType) -> int:
        return self.def_line_of.get(code.co_firstlineno, code.co_firstlineno)

    def new_names_order(self, code: types.CodeType, names: list[str]) -> list[str]:
        """Order for locals that are first bound in the same step (the trace lists locals in the order they were
        first bound): parameters in signature order, then by first appearance as a word in the function's source
        from its def line on. Unlike ``co_varnames`` this does not depend on the Python version (3.12 inlines
        comprehensions and so reorders co_varnames)."""
        if len(names) < 2:
            return names
        parameters = code.co_varnames[: _parameter_count(code)]
        if all(name in parameters for name in names):
            return sorted(names, key=parameters.index)
        start = self._offset_of_line(self.def_line(code))
        return sorted(names, key=lambda name: (self._first_use(name, start), name))

    def _offset_of_line(self, lineno: int) -> int:
        if self._line_offsets is None:
            offsets, total = [0], 0
            for line in self.source.split("\n"):
                total += len(line) + 1
                offsets.append(total)
            self._line_offsets = offsets
        return self._line_offsets[min(max(lineno - 1, 0), len(self._line_offsets) - 1)]

    def _first_use(self, name: str, start: int) -> int:
        """Where ``name`` first stands as a word of its own (not an attribute) at or after ``start``."""
        if self._word_offsets is None:  # one pass over the source instead of a pattern per name
            self._word_offsets = {}
            for match in _WORD.finditer(self.source):
                self._word_offsets.setdefault(match.group(), []).append(match.start())
        offsets = self._word_offsets.get(name, ())
        index = bisect.bisect_left(offsets, start)
        return offsets[index] if index < len(offsets) else len(self.source)


_WORD = re.compile(r"(?<![\w.])\w+")  # a whole word (what follows \w+ is never \w), not after a dot


def _parameter_count(code: types.CodeType) -> int:
    count = code.co_argcount + code.co_kwonlyargcount
    return count + bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)


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


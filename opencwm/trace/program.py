"""Trace one program: a source text plus a call expression such as ``f(1, [2, 3], key='x')``.

This is the unit of work of trace collection (CruxEval-style items, Python files with a call) and of
``opencwm trace run``. Module-level code and the call's arguments run untraced; the trace starts when the called
function is entered. Anything that prevents the call from starting (syntax error, missing function, an argument
expression that fails) gives a trace with status ``error`` and a one-line explanation.
"""

from __future__ import annotations

import ast

from opencwm.trace.record import ERROR, Trace
from opencwm.trace.source_map import SourceMap
from opencwm.trace.tracer import Limits, trace_call

PROGRAM_FILENAME = "<opencwm-program>"


class ProgramError(ValueError):
    """The program or its call expression cannot be set up."""


def parse_call(call: str) -> ast.Call:
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ProgramError(f"bad call expression {call!r}: {exc.msg}") from None
    if not isinstance(node, ast.Call):
        raise ProgramError(f"bad call expression {call!r}: expected a call such as f(1, 2)")
    return node


def cruxeval_call(entry: str, arguments: str) -> str:
    """CruxEval items give the arguments' text (``"[1, 2], 3"``); the call is ``f(ARGUMENTS)``."""
    return f"{entry}({arguments})"


def trace_program(
    source: str,
    call: str,
    *,
    limits: Limits | None = None,
    backend: str | None = None,
    filename: str = PROGRAM_FILENAME,
) -> Trace:
    try:
        tree = ast.parse(source, filename)
        code = compile(tree, filename, "exec")
    except SyntaxError as exc:
        return _error(source, f"syntax error in the program, line {exc.lineno}: {exc.msg}")
    try:
        node = parse_call(call)
    except ProgramError as exc:
        return _error(source, str(exc))
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException as exc:
        return _error(source, f"the program's module code raised {type(exc).__name__}: {exc}")

    def evaluate(expr: ast.expr, what: str):
        try:
            return eval(compile(ast.Expression(expr), "<call>", "eval"), namespace)
        except BaseException as exc:
            raise ProgramError(f"{what} failed: {type(exc).__name__}: {exc}") from None

    try:
        func = evaluate(node.func, f"looking up {ast.unparse(node.func)!r}")
        args: list = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(evaluate(arg.value, f"argument {ast.unparse(arg)!r}"))
            else:
                args.append(evaluate(arg, f"argument {ast.unparse(arg)!r}"))
        kwargs: dict = {}
        for keyword in node.keywords:
            value = evaluate(keyword.value, f"argument {ast.unparse(keyword)!r}")
            if keyword.arg is None:
                kwargs.update(value)
            else:
                kwargs[keyword.arg] = value
    except ProgramError as exc:
        return _error(source, str(exc))
    code_of = getattr(func, "__code__", None)
    if code_of is None or code_of.co_filename != filename:
        return _error(source, f"{ast.unparse(node.func)!r} is not a function defined in the program")
    return trace_call(
        func, tuple(args), kwargs, source=source, filename=filename, source_map=SourceMap(source, tree),
        limits=limits, backend=backend,
    )


def _error(source: str, message: str) -> Trace:
    return Trace(source=source, entry_lineno=0, status=ERROR, error=message)

"""Where traces come from: turns a collection SOURCE into work items for the sandbox.

- a ``.jsonl`` file of ``{"code", "input", "id"}`` items (CruxEval's schema): one trace of ``f(INPUT)`` each; an
  item may instead name its entry (``"entry"``) or give the whole call (``"call"``);
- a ``.py`` file: one trace per call expression, given with ``--call`` or written as top-level call statements
  at the end of the file (``main(3)``), which are taken out of the program that is run;
- a directory (a package or repository with a pytest suite): one work item per test file, whose calls into the
  package's own functions become traces (see ``harvest``);
- a dataset directory of synthetic programs (``opencwm data programs``): one trace per program.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.trace.program import cruxeval_call, parse_call
from opencwm.trace.record import Trace

_SKIP_DIRS = {".git", ".hg", ".tox", ".nox", ".venv", "venv", "env", "build", "dist", "node_modules", "__pycache__",
              "site-packages", ".eggs"}
_NOT_MODULES = {"setup.py", "conftest.py", "noxfile.py"}
_NOT_PACKAGES = {"tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "scripts"}


class SourceError(ValueError):
    """The collection source cannot be read."""


@dataclass
class WorkItem:
    key: str  # unique within the source; what resumption skips
    job: str  # "module:function" run in the sandbox
    kwargs: dict
    meta: dict = field(default_factory=dict)  # copied into every record of the item
    invalid: str | None = None  # why the item cannot run: it becomes a row with status error and this reason


def load_items(source: str | Path, calls: list[str] | None = None) -> tuple[str, list[WorkItem]]:
    """(kind of source, work items). Raises SourceError with a one-line reason, also for a source with no
    items at all (an empty file is a mistake, not an empty dataset)."""
    kind, items = _load_items(Path(source), calls)
    if not items:
        raise SourceError(f"{source}: no items to trace (an empty {kind} source)")
    return kind, items


def _load_items(path: Path, calls: list[str] | None) -> tuple[str, list[WorkItem]]:
    source = path
    if not path.exists():
        raise SourceError(f"{source}: no such file or directory")
    if path.is_dir():
        if (path / "manifest.json").exists():
            return "programs", program_dataset_items(path)
        return "repository", repository_items(path)
    if path.suffix == ".jsonl":
        return "jsonl", jsonl_items(path)
    if path.suffix == ".py":
        return "python", python_file_items(path, calls)
    raise SourceError(f"{source}: expected a .jsonl file, a .py file or a directory")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None


def jsonl_items(path: Path) -> list[WorkItem]:
    """One item per line. A line that is not a valid item (not JSON, missing or mistyped fields, a repeated id)
    is still an item: it becomes a row with status ``error`` and the reason, and the other lines are traced."""
    items, seen = [], set()
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        key = f"line-{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            items.append(_invalid(key, f"{path.name}:{number}: not valid JSON ({exc.msg})"))
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) \
                and not isinstance(record["id"], bool):
            key = str(record["id"])
        problem = _item_problem(record)
        if key in seen:
            key, problem = f"line-{number}", f"duplicate id {key!r}"
        seen.add(key)
        if problem:
            items.append(_invalid(key, f"{path.name}:{number}: {problem}"))
            continue
        call = record.get("call") or cruxeval_call(record.get("entry", "f"), record["input"])
        items.append(WorkItem(key, "opencwm.trace.jobs:trace_program_job",
                              {"source": record["code"], "call": call}, {"call": call}))
    return items


def _item_problem(record) -> str | None:
    if not isinstance(record, dict) or "code" not in record or not ("input" in record or "call" in record):
        return 'expected an object with "code" and "input" (or "call")'
    for name in ("code", "input", "call", "entry"):
        if name in record and not isinstance(record[name], str):
            return f"{name!r} must be a string, not {type(record[name]).__name__}"
    if "id" in record and (not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool)):
        return f"'id' must be a string or an integer, not {type(record['id']).__name__}"
    return None


def _invalid(key: str, reason: str) -> WorkItem:
    return WorkItem(key, "", {}, {}, invalid=reason)


def program_dataset_items(path: Path) -> list[WorkItem]:
    """A dataset of synthetic programs (``opencwm data programs``): one trace per program."""
    from opencwm.shards import PROGRAMS_KIND, DatasetError, read_manifest, read_rows

    manifest = read_manifest(path)
    if manifest.get("kind") != PROGRAMS_KIND:
        raise DatasetError(f"{path} holds a {manifest.get('kind')!r} dataset, not programs to trace")
    return [WorkItem(row["id"], "opencwm.trace.jobs:trace_program_job", {"source": row["source"], "call": row["call"]},
                     {"call": row["call"]}) for row in read_rows(path, columns=["id", "source", "call"])]


def _call_of(statement: ast.stmt) -> ast.Call | None:
    """The call a trailing statement makes: ``f(...)``, ``print(f(...))``, ``result = f(...)``."""
    value = statement.value if isinstance(statement, (ast.Expr, ast.Assign, ast.AnnAssign)) else None
    if not isinstance(value, ast.Call):
        return None
    is_print = isinstance(value.func, ast.Name) and value.func.id == "print"
    if is_print and len(value.args) == 1 and isinstance(value.args[0], ast.Call) and not value.keywords:
        return value.args[0]
    return value


def _is_main_guard(statement: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` with no ``else``."""
    test = statement.test if isinstance(statement, ast.If) and not statement.orelse else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def trailing_calls(tree: ast.Module) -> tuple[list[ast.Call], int | None]:
    """The calls to trace when none is given, and the line where the program ends (None: no such calls): the
    file's trailing top-level call statements (``f(1)``, ``print(f(1))``, ``result = f(1)``), or those of a
    trailing ``if __name__ == "__main__":`` block made only of such statements."""
    body = tree.body
    if body and _is_main_guard(body[-1]):
        calls = [_call_of(statement) for statement in body[-1].body]
        if all(calls):
            return calls, body[-1].lineno
    trailing: list[ast.stmt] = []
    for statement in reversed(body):
        if _call_of(statement) is None:
            break
        trailing.append(statement)
    trailing.reverse()
    return [_call_of(statement) for statement in trailing], trailing[0].lineno if trailing else None


def python_file_items(path: Path, calls: list[str] | None = None) -> list[WorkItem]:
    """One item per call of the file's program: the given ``calls``, else the calls at its end
    (``trailing_calls``; the program is what precedes them)."""
    text = _read_text(path)
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError as exc:
        raise SourceError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    source = text
    if not calls:
        found, end = trailing_calls(tree)
        if not found:
            raise SourceError(f"{path}: no call to trace: pass --call 'f(...)' or end the file with a call")
        calls = [ast.get_source_segment(text, call) or ast.unparse(call) for call in found]
        source = "\n".join(text.splitlines()[: end - 1]).rstrip() + "\n"
    items = []
    for index, call in enumerate(calls):
        parse_call(call)  # fail early on a malformed expression
        items.append(WorkItem(f"{path.name}:{index}:{call}", "opencwm.trace.jobs:trace_program_job",
                              {"source": source, "call": call}, {"call": call}))
    return items


def _walk(root: Path):
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name in _SKIP_DIRS or path.name.startswith("."):
                continue
            yield from _walk(path)
        else:
            yield path


def find_packages(root: Path) -> list[str]:
    """Package directories and top-level modules of a repository (under ``src/`` when it has one)."""
    base = root / "src" if (root / "src").is_dir() else root
    found = []
    for path in sorted(base.iterdir()):
        if path.name in _SKIP_DIRS or path.name.startswith(".") or path.name in _NOT_PACKAGES:
            continue
        is_package = path.is_dir() and (path / "__init__.py").exists()
        is_module = path.suffix == ".py" and path.name not in _NOT_MODULES and not path.name.startswith("test_")
        if is_package or is_module:
            found.append(str(path.resolve()))
    return found


def repository_items(root: Path) -> list[WorkItem]:
    root = root.resolve()
    packages = find_packages(root)
    if not packages:
        raise SourceError(f"{root}: found no Python package or module to trace")
    tests = [
        p for p in _walk(root)
        if p.suffix == ".py" and (p.name.startswith("test_") or p.name.endswith("_test.py"))
    ]
    if not tests:
        raise SourceError(f"{root}: found no test files (test_*.py or *_test.py)")
    return [
        WorkItem(str(p.relative_to(root)), "opencwm.trace.jobs:harvest_tests_job",
                 {"root": str(root), "test_file": str(p.relative_to(root)), "packages": packages})
        for p in tests
    ]


def failed_trace(item: WorkItem, outcome) -> Trace:
    """The trace of an item whose job gave none (a sandbox ``Outcome``: timeout, memory, crash, ...): no frames,
    the outcome's status and error."""
    source = item.kwargs.get("source", "")
    return Trace(source=source if isinstance(source, str) else "", entry_lineno=0, status=outcome.status,
                 error=outcome.error)

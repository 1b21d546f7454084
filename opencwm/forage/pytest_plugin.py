"""A pytest plugin that the forager loads inside the sandbox (``-p opencwm_forage_plugin``): it writes every test's
outcome, the failure text of failed tests and, when asked, which tests executed which lines (coverage.py dynamic
contexts, one context per test) to a JSON file.

It is copied beside each environment as a single module, so it depends on nothing from opencwm; its only optional
dependency is ``coverage`` in the environment.

Environment variables: ``OPENCWM_FORAGE_RESULTS`` (the JSON file to write), ``OPENCWM_FORAGE_COVERAGE`` (a
directory whose Python files to measure; coverage is off when unset), ``OPENCWM_FORAGE_SELECT`` (the tests to
keep), ``OPENCWM_FORAGE_REVERSE`` (run the tests in the reverse of the suite's order: the baseline's second run,
which finds the tests and the code whose behaviour depends on test order).

``run_pytest`` is the job that the sandbox's fork server runs for warm test runs (``opencwm.forage.warm_runner``):
pytest and this module are imported once in the server, and each run is a forked child calling ``pytest.main``.
"""

import builtins
import json
import os
import sys

import pytest

# xfailed: an expected failure that failed; xpassed: one that passed (not strict). SWE-bench counts the first as a
# pass and the second as missing, so neither is "passed".
_RANK = {"passed": 0, "xpassed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 3}
# Coverage contexts besides test node ids: code run before collection (conftest) or by an import statement while
# test modules are collected (the package's import-time code, which every later test module shares) concerns every
# test; other code run while a test module is collected (its module-level code, decorators) every test of it.
SESSION = "<session>"
IMPORT = "<import>"
COLLECT = "<collect>"
_outcomes = {}
_failures = {}
_coverage = None
_context = SESSION  # the context outside imports
_importing = 0  # depth of import statements being run while collecting


def _start_coverage():
    """Measure from the plugin's import on (``-p`` loads it before any conftest), so that what conftests run at
    start-up is seen too."""
    global _coverage
    source = os.environ.get("OPENCWM_FORAGE_COVERAGE")
    if source and _coverage is None:
        import coverage

        _coverage = coverage.Coverage(data_file=None, source=[source])
        _coverage.start()
        _coverage.switch_context(SESSION)
        builtins.__import__ = _make_import(builtins.__import__)


def _switch(context):
    global _context
    _context = context
    if not _importing:
        _coverage.switch_context(context)


def _make_import(original):
    """``__import__`` that records what an import statement run while a test module is collected executes under
    ``<import>``: a package's import-time code runs in whichever test module imports it first, yet every test
    module uses what it built (toolz fills a signature registry when it is imported)."""

    def importing(name, globals=None, locals=None, fromlist=(), level=0):
        global _importing
        if not _context.startswith(COLLECT):
            return original(name, globals, locals, fromlist, level)
        if not _importing:
            _coverage.switch_context(IMPORT)
        _importing += 1
        try:
            return original(name, globals, locals, fromlist, level)
        finally:
            _importing -= 1
            if not _importing:
                _coverage.switch_context(_context)

    return importing


_start_coverage()


def pytest_collection_modifyitems(session, config, items):
    """Keep only the tests named in ``OPENCWM_FORAGE_SELECT`` (a JSON list of node ids, or of their prefixes
    such as a file or a class), in collection order, or reversed with ``OPENCWM_FORAGE_REVERSE``."""
    if os.environ.get("OPENCWM_FORAGE_REVERSE"):
        items.reverse()
    path = os.environ.get("OPENCWM_FORAGE_SELECT")
    if not path:
        return
    with open(path) as handle:
        chosen = set(json.load(handle))

    def kept(item):
        parts = item.nodeid.split("::")
        return any("::".join(parts[:n]) in chosen for n in range(1, len(parts) + 1))

    dropped = [item for item in items if not kept(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if kept(item)]


def pytest_collectstart(collector):
    if _coverage is not None and isinstance(collector, pytest.Module):
        _switch(COLLECT + collector.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _coverage is not None:
        _switch(item.nodeid)
    yield
    if _coverage is not None:
        _switch("")


def _tidy(text):
    """A failure's text with paths relative to the tree (the run's working directory) and the traceback starting
    at the first frame in the tree (pytest's and pluggy's own frames cut)."""
    lines = text.replace(os.getcwd() + os.sep, "").splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith('  File "') and
                  not line.startswith('  File "/')), None)
    if first:
        lines = ["Traceback (most recent call last):", *lines[first:]]
    return "\n".join(lines)


def _record(nodeid, outcome, text=None):
    if _RANK[outcome] >= _RANK.get(_outcomes.get(nodeid), -1):
        _outcomes[nodeid] = outcome
    if text and outcome in ("failed", "error"):
        _failures.setdefault(nodeid, _tidy(text)[-3000:])


def pytest_runtest_logreport(report):
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            _record(report.nodeid, "xfailed" if report.skipped else "xpassed" if report.passed else "failed",
                    report.longreprtext)
        else:
            _record(report.nodeid, "skipped" if report.skipped else report.outcome, report.longreprtext)
    elif report.failed:
        _record(report.nodeid, "error", report.longreprtext)
    elif report.skipped:
        _record(report.nodeid, "skipped")


def pytest_collectreport(report):
    if _coverage is not None:
        _switch(SESSION)
    if report.failed:
        _record(report.nodeid or "<collection>", "error", report.longreprtext)


def _results(exitstatus):
    lines = {}
    if _coverage is not None:
        _coverage.stop()
        data = _coverage.get_data()
        root = os.environ["OPENCWM_FORAGE_COVERAGE"]
        for filename in data.measured_files():
            by_line = data.contexts_by_lineno(filename)
            tests = {str(n): sorted(c for c in contexts if c) for n, contexts in by_line.items()}
            tests = {n: c for n, c in tests.items() if c}
            if tests:
                lines[os.path.relpath(filename, root)] = tests
    return {"outcomes": _outcomes, "failures": _failures, "coverage": lines, "exitstatus": int(exitstatus)}


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("OPENCWM_FORAGE_RESULTS")
    if path:  # written whole or not at all
        with open(path + ".part", "w") as handle:
            json.dump(_results(exitstatus), handle)
        os.replace(path + ".part", path)


def _warm(tree):
    """Import pytest's own plugins and the installed ones (entry point ``pytest11``, e.g. hypothesis) once in the
    fork server, so that no run imports them again (``OPENCWM_FORAGE_WARM=<tree>``). Nothing from the work tree
    may be imported here (runs must see the tree as it is then): a plugin that needs the package under test
    (hypothesis needs attrs) fails to import and is left to the runs."""
    import importlib
    from importlib import metadata

    from _pytest.config import default_plugins

    tree = os.path.realpath(tree)

    def in_tree(path):
        path = os.path.realpath(path)
        return path == tree or path.startswith(tree + os.sep)

    inside = [p for p in sys.path if in_tree(p or ".")]
    sys.path[:] = [p for p in sys.path if p not in inside]
    try:
        for name in default_plugins:
            try:
                importlib.import_module(f"_pytest.{name}")
            except ImportError:
                pass
        for entry in metadata.entry_points(group="pytest11"):
            try:
                importlib.import_module(entry.module)
            except Exception:  # reported by the run that loads it, if it fails there too
                pass
    finally:
        sys.path[:0] = inside
    for name, module in list(sys.modules.items()):
        if in_tree(getattr(module, "__file__", None) or "/"):
            raise RuntimeError(f"the fork server imported {name} from the work tree")


if os.environ.get("OPENCWM_FORAGE_WARM"):
    _warm(os.environ["OPENCWM_FORAGE_WARM"])


def run_pytest(tree, args, pycache, select=None, max_output=20000):
    """Run ``pytest args`` in the work tree ``tree`` inside this process (a child forked from a warm server) and
    return the results with the tail of pytest's output. Bytecode, assertion-rewritten test modules included, is
    cached under ``pycache`` (outside the tree, so resetting the tree keeps it)."""
    os.chdir(tree)
    if select:
        os.environ["OPENCWM_FORAGE_SELECT"] = select
    sys.pycache_prefix = pycache
    sys.dont_write_bytecode = False
    log = os.path.join(os.path.dirname(tree), f"pytest-{os.getpid()}.log")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        exitstatus = pytest.main(list(args), plugins=[sys.modules[__name__]])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    with open(log, errors="replace") as handle:
        output = handle.read()
    os.unlink(log)
    results = _results(exitstatus)
    results["output"] = output[-max_output:]
    return results

"""A pytest plugin that the forager loads inside the sandbox (``-p opencwm_forage_plugin``): it writes every test's
outcome, the failure text of failed tests and, when asked, which tests executed which lines (coverage.py dynamic
contexts, one context per test) to a JSON file.

It is copied beside each environment as a single module, so it depends on nothing from opencwm; its only optional
dependency is ``coverage`` in the environment.

Environment variables: ``OPENCWM_FORAGE_RESULTS`` (the JSON file to write), ``OPENCWM_FORAGE_COVERAGE`` (a
directory whose Python files to measure; coverage is off when unset).
"""

import json
import os

import pytest

_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_outcomes = {}
_failures = {}
_coverage = None


def pytest_configure(config):
    global _coverage
    source = os.environ.get("OPENCWM_FORAGE_COVERAGE")
    if source and _coverage is None:
        import coverage

        _coverage = coverage.Coverage(data_file=None, source=[source])
        _coverage.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _coverage is not None:
        _coverage.switch_context(item.nodeid)
    yield
    if _coverage is not None:
        _coverage.switch_context("")


def _record(nodeid, outcome, text=None):
    if _RANK[outcome] >= _RANK.get(_outcomes.get(nodeid), -1):
        _outcomes[nodeid] = outcome
    if text and outcome in ("failed", "error"):
        _failures.setdefault(nodeid, text[-3000:])


def pytest_runtest_logreport(report):
    if report.when == "call":
        _record(report.nodeid, "skipped" if report.skipped else report.outcome, report.longreprtext)
    elif report.failed:
        _record(report.nodeid, "error", report.longreprtext)
    elif report.skipped:
        _record(report.nodeid, "skipped")


def pytest_collectreport(report):
    if report.failed:
        _record(report.nodeid or "<collection>", "error", report.longreprtext)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("OPENCWM_FORAGE_RESULTS")
    if not path:
        return
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
    with open(path, "w") as handle:
        json.dump({"outcomes": _outcomes, "failures": _failures, "coverage": lines, "exitstatus": int(exitstatus)},
                  handle)

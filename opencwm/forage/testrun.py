"""What a test run gives back, and the one reader of it: ``TestRun`` (each test's outcome, failures, per-test line
coverage), read from the results file the plugin (``opencwm.forage.pytest_plugin``) writes inside the sandbox or the
container, as untrusted data; the plugin's names; the forager's error type. Every test runner (the sandboxed
pytest of ``opencwm.forage.environment``, the warm ``opencwm.forage.warm_runner``, ``opencwm.forage.docker``) reads
its results here."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN = "opencwm_forage_plugin"
SESSION_CONTEXT, IMPORT_CONTEXT, COLLECT_CONTEXT = "<session>", "<import>", "<collect>"  # the plugin's names
TEST_EXTRAS = ("test", "tests", "testing")


class ForageError(RuntimeError):
    """An environment could not be built or used; the message says why in one line."""


@dataclass
class TestRun:
    status: str  # ok | timeout | killed | error (no results written: pytest could not start)
    outcomes: dict[str, str]  # node id -> passed | failed | error | skipped | xfailed | xpassed
    failures: dict[str, str] = field(default_factory=dict)  # node id -> failure text
    coverage: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # file -> line -> node ids
    output: str = ""
    seconds: float = 0.0
    exit_code: int | None = None  # pytest's exit status, as its plugin saw it

    def passed(self, nodeid: str) -> bool:
        return self.outcomes.get(nodeid) == "passed"

    @classmethod
    def from_results(cls, status: str, data, output: str, seconds: float) -> TestRun:
        """A run from what the results plugin reported -- written inside the sandbox, beside code under test, so
        checked for its shape; anything else is a run with status ``error``."""
        def mapping(value, check) -> bool:
            return isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())

        text = lambda v: isinstance(v, str)
        names = lambda v: isinstance(v, list) and all(map(text, v))
        if not (isinstance(data, dict) and mapping(data.get("outcomes"), text) and mapping(data.get("failures"), text)
                and mapping(data.get("coverage"), lambda lines: mapping(lines, names))):
            return cls("error", {}, output=f"{output}\n[malformed results]", seconds=seconds)
        code = data.get("exitstatus")
        return cls(status, data["outcomes"], data["failures"], data["coverage"], output, seconds,
                   code if type(code) is int else None)


MAX_RESULTS = 256 * 1024 * 1024


def read_results(results: Path, status: str, output: str, seconds: float) -> TestRun:
    """The ``TestRun`` of a finished run from the results file the plugin wrote in it (removed afterwards), read
    as untrusted: no file is an error (pytest could not start), an unreadable or malformed one too."""
    try:
        data = read_untrusted_json(results)
    except FileNotFoundError:
        return TestRun(status if status != "ok" else "error", {}, output=output, seconds=seconds)
    except (OSError, ValueError) as exc:  # cut short, or not what the plugin writes
        return TestRun("error", {}, output=f"{output}\n[unreadable results file: {exc}]", seconds=seconds)
    finally:
        results.unlink(missing_ok=True)
    return TestRun.from_results(status, data, output, seconds)


def read_untrusted_json(path: Path):
    """JSON from a file a sandboxed process could write: no link followed, only a regular file (a FIFO would block
    the host), at most ``MAX_RESULTS`` bytes. Raises FileNotFoundError, OSError or ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(MAX_RESULTS + 1)
    if len(data) > MAX_RESULTS:
        raise ValueError(f"over {MAX_RESULTS} bytes")
    return json.loads(data)

"""Executable repository environments, as built by ``opencwm.forage.build``: a Python repository as a git
repository (``repo/``), a virtual environment with its dependencies and pytest (``venv/``), and ``env.json`` (each
test's baseline outcome, the flaky ones, which tests run which functions and lines). ``Environment`` opens one and
works with it: fresh work trees, an untrusted tree's diff, and sandboxed test runs (results read by
``opencwm.forage.testrun``; Docker runs by ``opencwm.forage.docker``). Every path in an environment is absolute, so it
works from whatever directory it is used. Everything that runs in it (tests, the agent) runs in the sandbox without
network, writing only in its own work tree; the package itself is not installed in the venv, so tests import the
work tree's code (``PYTHONPATH``). Host-side git treats a tree as hostile (``git``, ``GIT_SAFETY``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.forage import docker
from opencwm.forage.testrun import (  # (re-exported: the names users of environments know)
    COLLECT_CONTEXT,
    IMPORT_CONTEXT,
    PLUGIN,
    SESSION_CONTEXT,
    ForageError,
    TestRun,
    read_results,
)
from opencwm.sandbox import workspace
from opencwm.sandbox.orphans import owned_name, sweep
from opencwm.sandbox.shell import CommandResult, run_command

# When validation has the whole suite decide a mutation that every covering test passes (opencwm.forage.tasks)
CONFIRM = ("order-dependent", "always", "never")
WORK_TREE_DISK_MB, WORK_TREE_INODES = 1024, 65_536  # what sandboxed code may add to a work tree (run as root)
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "opencwm", "GIT_AUTHOR_EMAIL": "forage@opencwm", "GIT_COMMITTER_NAME": "opencwm",
                "GIT_COMMITTER_EMAIL": "forage@opencwm", "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
                "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}


# Host-side git never runs what a repository or a tree asks it to: no hooks, no fsmonitor, no external diff or
# text conversion programs, no system or global configuration, no network protocols. (Work trees keep their
# .git read-only inside the sandbox, so the repository configuration is opencwm's own.)
GIT_SAFETY = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
              "-c", "protocol.allow=never", "-c", "protocol.file.allow=always", "-c", "core.sshCommand=false",
              "-c", "credential.helper=", "-c", "core.pager=cat", "-c", "core.editor=false",
              "-c", "submodule.recurse=false", "-c", "core.askPass=", "-c", "uploadpack.packObjectsHook=")


def git_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_IDENTITY, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_ATTR_NOSYSTEM="1",
               GIT_TERMINAL_PROMPT="0", GIT_NO_REPLACE_OBJECTS="1")
    return env


def git_command(repo: str | Path, *args: str) -> list[str]:
    if args and args[0] == "diff":
        args = ("diff", "--no-ext-diff", "--no-textconv", *args[1:])
    return ["git", *GIT_SAFETY, "-C", str(repo), *args]


def git(repo: str | Path, *args: str, check: bool = True, input: str | None = None,
        environment: dict[str, str] | None = None) -> str:
    result = subprocess.run(git_command(repo, *args), capture_output=True, text=True, input=input,
                            env={**git_environment(), **(environment or {})})
    if check and result.returncode != 0:
        raise ForageError(f"git {' '.join(args[:2])} failed: {result.stderr.strip()[:300]}")
    return result.stdout


def is_test_file(path: str) -> bool:
    parts = Path(path).parts
    name = parts[-1]
    return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
            or any(p in ("test", "tests", "testing") for p in parts[:-1]))


@dataclass
class Environment:
    path: Path
    info: dict
    reused: bool = field(default=False, compare=False)  # found in the cache rather than built now

    @classmethod
    def open(cls, path: str | Path) -> Environment:
        """The environment in directory ``path`` (as ``build_environment`` left it), whether or not it built."""
        path = Path(path).resolve()
        try:
            info = json.loads((path / "env.json").read_text())
        except FileNotFoundError:
            raise ForageError(f"{path}: not an environment directory (make one with 'opencwm forage env SOURCE')"
                              ) from None
        except (OSError, ValueError) as exc:
            raise ForageError(f"{path}/env.json: unreadable ({exc})") from None
        if not isinstance(info, dict):
            raise ForageError(f"{path}/env.json: not an environment description")
        return cls(path, info, reused=True)

    @property
    def repo(self) -> Path:
        return self.path / "repo"

    @property
    def venv(self) -> Path:
        return self.path / "venv"

    @property
    def ok(self) -> bool:
        return self.info.get("status") == "ok"

    @property
    def base_commit(self) -> str:
        return self.info["base_commit"]

    def passing_tests(self) -> list[str]:
        flaky = set(self.info.get("flaky", []))
        return sorted(t for t, o in self.info.get("tests", {}).items() if o == "passed" and t not in flaky)

    def tests_for(self, function_key: str) -> list[str]:
        """The passing, non-flaky tests that execute the function ``path::qualname``, or may depend on it: code
        run at start-up (``<session>``) or by the imports of test modules (``<import>``) counts for every test,
        other code run while collecting a test module (``<collect>MODULE``: module-level code, decorators) for
        every test of that module."""
        passing = self.passing_tests()
        chosen: set[str] = set()
        for context in self.info.get("coverage", {}).get(function_key, []):
            if context in (SESSION_CONTEXT, IMPORT_CONTEXT):
                return passing
            if context.startswith(COLLECT_CONTEXT):
                module = context[len(COLLECT_CONTEXT):] + "::"
                chosen.update(t for t in passing if t.startswith(module))
            else:
                chosen.add(context)
        return [t for t in passing if t in chosen]

    def ever_executed(self, path: str, lines: range) -> bool | None:
        """Whether the baseline run (start-up, collection and every test) executed any of ``lines`` of ``path``;
        None for an environment built before executed lines were recorded."""
        return self._recorded("executed_lines", path, lines)

    def order_dependent(self, path: str, lines: range) -> bool | None:
        """Whether the tests that ran any of ``lines`` of ``path`` changed when the suite ran in reverse order
        (code run for whichever test comes first: a lazily built registry, a cache), so that a test may depend on
        it without running it; None for an environment built before this was recorded."""
        return self._recorded("order_dependent_lines", path, lines)

    def _recorded(self, key: str, path: str, lines: range) -> bool | None:
        """Whether any of ``lines`` of ``path`` is in the baseline's line set ``info[key]`` (None: not recorded)."""
        recorded = self.info.get(key)
        if recorded is None:
            return None
        return not set(recorded.get(path, ())).isdisjoint(lines)

    # -- work trees -----------------------------------------------------------------------------------------------
    def checkout(self, commit: str | None = None, parent: str | Path | None = None, *,
                 disk_mb: int = WORK_TREE_DISK_MB, disk_inodes: int = WORK_TREE_INODES) -> Path:
        """A fresh work tree of the repository at ``commit`` (default: the baseline) in a new directory
        ``<parent>/<id>/repo``; the caller removes ``<id>`` when done (``discard``). Run as root, ``<id>`` is a
        tmpfs of its own that holds the checkout plus ``disk_mb`` and ``disk_inodes`` more (what sandboxed code
        may write there, see ``opencwm.sandbox.workspace``)."""
        parent = Path(parent) if parent else self.path / "work"
        sweep(parent, "", workspace.remove)  # the trees of runs killed before they removed their own
        root = parent / owned_name("")
        parent.mkdir(parents=True, exist_ok=True)
        workspace.create(root)
        # pytest looks for its configuration in the tests' directories and then in every directory above them: a
        # file here ends that search at the tree, so a cache kept inside another project (opencwm's checkout) never
        # lends the suite that project's configuration. The tree's own configuration, when it has one, comes first.
        (root / "pytest.ini").write_text("# the repository's tests see no configuration from above its tree\n")
        tree = root / "repo"
        git(self.path, "clone", "-q", "--shared", "--no-checkout", str(self.repo), str(tree))
        git(tree, "checkout", "-q", "-f", commit or self.base_commit)
        workspace.fit(root, bytes=disk_mb << 20, inodes=disk_inodes)
        return tree

    def diff(self, tree: Path, commit: str) -> str:
        """The changes of a work tree that untrusted code wrote (an agent's) against ``commit``, new files
        included (git's ignore rules apply). Nothing of the tree's own ``.git`` is used: git runs on the
        environment's repository (which no sandboxed process can write) with a throwaway index and object store,
        so no configuration, hook or filter of the tree's can run on the host."""
        with tempfile.TemporaryDirectory(prefix="opencwm-diff-") as scratch:
            os.makedirs(f"{scratch}/objects/pack")
            environment = {"GIT_DIR": str(self.repo / ".git"), "GIT_WORK_TREE": str(tree),
                           "GIT_INDEX_FILE": f"{scratch}/index", "GIT_OBJECT_DIRECTORY": f"{scratch}/objects",
                           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(self.repo / ".git" / "objects")}
            git(tree, "read-tree", commit, environment=environment)
            git(tree, "add", "-A", environment=environment)
            return git(tree, "diff", "--cached", "--binary", commit, environment=environment)

    @staticmethod
    def apply(tree: Path, patch: str) -> bool:
        """Apply ``patch`` (a git diff, perhaps an agent's) to a work tree with the host's git, hardened as every
        host git call is; False when it does not apply. An empty patch applies."""
        if not patch.strip():
            return True
        applied = subprocess.run(git_command(tree, "apply", "--whitespace=nowarn", "-"), input=patch, text=True,
                                 capture_output=True, env=git_environment())
        return applied.returncode == 0

    @staticmethod
    def reset(tree: Path, commit: str) -> None:
        """Back to ``commit`` exactly: tracked files restored, untracked and ignored files removed."""
        git(tree, "checkout", "-q", "-f", commit)
        git(tree, "clean", "-q", "-f", "-d", "-x")

    @staticmethod
    def discard(tree: Path) -> None:
        workspace.remove(tree.parent)

    def sandbox_env(self, tree: Path) -> dict[str, str]:
        src = tree / "src"
        path = f"{src}:{tree}" if src.is_dir() else str(tree)
        return {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(self.venv),
                "PYTHONPATH": f"{path}:{self.path / 'plugin'}"}

    def pytest_args(self, tests: list[str] | None) -> list[str]:
        """pytest's arguments for a run of ``tests`` (node ids; None: the whole suite), results plugin aside: the
        test files, whose other tests the plugin deselects (``select_tests``), so the chosen tests run in the
        suite's own order, the order of the baseline (six's ``test_lazy`` passes only before the tests that
        import what it checks is not yet imported). Tracebacks are Python's own (``--tb=native``): pytest's
        formatting re-parses whole source files for every frame, which made reporting a few failures cost more
        than running the tests. A test module that fails to import is recorded as an error and the rest of the
        suite still runs. pytest 9's own subtest reports are off (``no:subtests``): a unittest test with a failing
        ``subTest`` is that test failing, as older pytest and SWE-bench's log parser see it."""
        targets = sorted({t.split("::")[0] for t in tests}) if tests is not None else self.info.get("test_args", [])
        return ["-p", "no:cacheprovider", "-p", "no:subtests", "-q", "--tb=native", "--continue-on-collection-errors",
                "-o", "addopts=", "--rootdir", ".", *targets]

    @staticmethod
    @contextlib.contextmanager
    def select_tests(tree: Path, tests: list[str] | None):
        """The file (beside the tree) naming the tests a run keeps, for ``OPENCWM_FORAGE_SELECT``, removed
        afterwards; None: all tests."""
        if tests is None:
            yield None
            return
        path = tree.parent / f"select-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(sorted(tests)))
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def run_tests(self, tree: Path, tests: list[str] | None = None, *, coverage: bool = False,
                  reverse: bool = False, timeout: float = 900, backend: str = "auto",
                  report_all: bool = False) -> TestRun:
        """Run the repository's tests (all, or the given node ids; in the reverse of the suite's order with
        ``reverse``) in the sandbox, or in a container with ``backend="docker"``; the tree's parent directory is
        writable (results go there), the tree itself is restored afterwards by the caller if needed.
        ``report_all``: pytest's summary names every test with its outcome (``-rA``, what SWE-bench's log parser
        reads) and the output is kept whole (up to 4 MB)."""
        env = {"OPENCWM_FORAGE_REVERSE": "1"} if reverse else {}
        args = [*self.pytest_args(tests), *(["-rA"] if report_all else [])]
        max_output = 4_000_000 if report_all else 20_000
        if backend == "docker":
            return docker.run_tests(self, tree, tests, args, env, coverage=coverage, timeout=timeout,
                                    max_output=max_output)
        results = tree.parent / f"results-{uuid.uuid4().hex[:8]}.json"
        env.update(self.sandbox_env(tree), OPENCWM_FORAGE_RESULTS=str(results))
        if coverage:
            env["OPENCWM_FORAGE_COVERAGE"] = str(tree)
        argv = [str(self.venv / "bin" / "python"), "-m", "pytest", "-p", PLUGIN, *args]
        with self.select_tests(tree, tests) as selection:
            if selection is not None:
                env["OPENCWM_FORAGE_SELECT"] = str(selection)
            result: CommandResult = run_command(argv, tree.parent, cwd=tree, timeout=timeout, env=env,
                                                backend=backend, visible=(str(self.path),),
                                                protected=(str(tree / ".git"),), max_output=max_output)
        return read_results(results, result.status, result.output, result.seconds)


def install_plugin(path: Path) -> None:
    """Put the current results plugin beside the environment (``<path>/plugin``), atomically, if it differs."""
    source = Path(__file__).with_name("pytest_plugin.py").read_bytes()
    target = path / "plugin" / f"{PLUGIN}.py"
    if target.is_file() and target.read_bytes() == source:
        return
    target.parent.mkdir(exist_ok=True)
    temporary = target.with_name(f".{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_bytes(source)
    os.replace(temporary, target)

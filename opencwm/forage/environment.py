"""Executable repository environments: a Python repository (a local directory or a PyPI source distribution)
turned into a git repository, a virtual environment with its dependencies and pytest, a baseline of every test's
outcome and a coverage map of which tests run which functions. The baseline runs twice, the second time in
reverse order: tests whose outcomes disagree are flaky or depend on test order and are left out, and lines whose
tests change with the order (code run for whichever test comes first) are recorded, since a test may depend on
them without running them.

Environments are cached on disk by content (``CACHE/<key>/``: ``repo/``, ``venv/``, ``env.json``), built once and
reused by every task. The cache is outside any source tree unless told otherwise (``default_cache``: the user's
cache directory, as pip and Hugging Face do), and every path in it is absolute, so an environment works from
whatever directory it is used. Building installs packages from PyPI outside the sandbox (like a Docker image build);
everything that runs afterwards (tests, the agent) runs in the sandbox without network, writing only in its own work
tree. The package itself is uninstalled from the venv after its dependencies are in, so tests always import the work
tree's code (``PYTHONPATH``).

A build that fails leaves ``env.json`` with ``status: build_failed`` and the reason; it is not retried unless
asked (``rebuild=True``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.forage.mutate import functions
from opencwm.sandbox.orphans import owned_name, sweep
from opencwm.sandbox.shell import CommandResult, run_command

PLUGIN = "opencwm_forage_plugin"
SESSION_CONTEXT, IMPORT_CONTEXT, COLLECT_CONTEXT = "<session>", "<import>", "<collect>"  # the plugin's names
TEST_EXTRAS = ("test", "tests", "testing")
# When validation has the whole suite decide a mutation that every covering test passes (opencwm.forage.tasks)
CONFIRM = ("order-dependent", "always", "never")
ENV_FORMAT = 3  # what env.json holds; 2: executed lines recorded; 3: import-time code, order-dependent lines
COVERAGE = "coverage>=5"  # dynamic contexts (per-test coverage)
PYTEST_FALLBACKS = ("pytest<9", "pytest<8")  # tried in turn when the suite does not run with the newest pytest
REQUIREMENT_FILES = ("requirements-test.txt", "requirements_test.txt", "test-requirements.txt",
                     "test_requirements.txt", "requirements-tests.txt", "requirements/test.txt",
                     "requirements/tests.txt", "tests/requirements.txt")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "opencwm", "GIT_AUTHOR_EMAIL": "forage@opencwm", "GIT_COMMITTER_NAME": "opencwm",
                "GIT_COMMITTER_EMAIL": "forage@opencwm", "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
                "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}


class ForageError(RuntimeError):
    """An environment could not be built or used; the message says why in one line."""


CACHE_VARIABLE = "OPENCWM_CACHE"


def default_cache() -> Path:
    """Where environments are cached unless told: ``$OPENCWM_CACHE/envs``, else the user's cache directory
    (``$XDG_CACHE_HOME/opencwm/envs``, by default ``~/.cache/opencwm/envs``)."""
    root = os.environ.get(CACHE_VARIABLE)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opencwm"
    return Path(root) / "envs"


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


def has_commit(repo: str | Path, commit: str) -> bool:
    return subprocess.run(git_command(repo, "cat-file", "-e", f"{commit}^{{commit}}"), capture_output=True,
                          env=git_environment()).returncode == 0


def is_test_file(path: str) -> bool:
    parts = Path(path).parts
    name = parts[-1]
    return (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
            or any(p in ("test", "tests", "testing") for p in parts[:-1]))


@dataclass
class TestRun:
    status: str  # ok | timeout | killed | error (no results written: pytest could not start)
    outcomes: dict[str, str]  # node id -> passed | failed | error | skipped
    failures: dict[str, str] = field(default_factory=dict)  # node id -> failure text
    coverage: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # file -> line -> node ids
    output: str = ""
    seconds: float = 0.0

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
        return cls(status, data["outcomes"], data["failures"], data["coverage"], output, seconds)


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
    def checkout(self, commit: str | None = None, parent: str | Path | None = None) -> Path:
        """A fresh work tree of the repository at ``commit`` (default: the baseline) in a new directory
        ``<parent>/<id>/repo``; the caller removes ``<id>`` when done (``discard``)."""
        parent = Path(parent) if parent else self.path / "work"
        sweep(parent, "")  # the trees of runs killed before they removed their own
        root = parent / owned_name("")
        root.mkdir(parents=True)
        # pytest looks for its configuration in the tests' directories and then in every directory above them: a
        # file here ends that search at the tree, so a cache kept inside another project (opencwm's checkout) never
        # lends the suite that project's configuration. The tree's own configuration, when it has one, comes first.
        (root / "pytest.ini").write_text("# the repository's tests see no configuration from above its tree\n")
        tree = root / "repo"
        git(self.path, "clone", "-q", "--shared", "--no-checkout", str(self.repo), str(tree))
        git(tree, "checkout", "-q", "-f", commit or self.base_commit)
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
    def reset(tree: Path, commit: str) -> None:
        """Back to ``commit`` exactly: tracked files restored, untracked and ignored files removed."""
        git(tree, "checkout", "-q", "-f", commit)
        git(tree, "clean", "-q", "-f", "-d", "-x")

    @staticmethod
    def discard(tree: Path) -> None:
        shutil.rmtree(tree.parent, ignore_errors=True)

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
        suite still runs."""
        targets = sorted({t.split("::")[0] for t in tests}) if tests is not None else self.info.get("test_args", [])
        return ["-p", "no:cacheprovider", "-q", "--tb=native", "--continue-on-collection-errors", "-o", "addopts=",
                "--rootdir", ".", *targets]

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
                  reverse: bool = False, timeout: float = 900, backend: str = "auto") -> TestRun:
        """Run the repository's tests (all, or the given node ids; in the reverse of the suite's order with
        ``reverse``) in the sandbox; the tree's parent directory is writable (results go there), the tree itself
        is restored afterwards by the caller if needed."""
        if backend == "docker":
            from opencwm.forage import docker

            client, why = docker.engine()
            if client is None:
                raise ForageError(f"--sandbox docker: {why}")
            return docker.run_tests(self, tree, tests, client, docker.build_image(self, client), timeout=timeout)
        results = tree.parent / f"results-{uuid.uuid4().hex[:8]}.json"
        env = {**self.sandbox_env(tree), "OPENCWM_FORAGE_RESULTS": str(results)}
        if coverage:
            env["OPENCWM_FORAGE_COVERAGE"] = str(tree)
        if reverse:
            env["OPENCWM_FORAGE_REVERSE"] = "1"
        argv = [str(self.venv / "bin" / "python"), "-m", "pytest", "-p", PLUGIN, *self.pytest_args(tests)]
        with self.select_tests(tree, tests) as selection:
            if selection is not None:
                env["OPENCWM_FORAGE_SELECT"] = str(selection)
            result: CommandResult = run_command(argv, tree.parent, cwd=tree, timeout=timeout, env=env,
                                                backend=backend, visible=(str(self.path),),
                                                protected=(str(tree / ".git"),), max_output=20_000)
        try:
            data = read_untrusted_json(results)
        except FileNotFoundError:
            status = result.status if result.status != "ok" else "error"
            return TestRun(status, {}, output=result.output, seconds=result.seconds)
        except (OSError, ValueError) as exc:  # cut short, or not what the plugin writes
            return TestRun("error", {}, output=f"{result.output}\n[unreadable results file: {exc}]",
                           seconds=result.seconds)
        finally:
            results.unlink(missing_ok=True)
        return TestRun.from_results(result.status, data, result.output, result.seconds)


MAX_RESULTS = 256 * 1024 * 1024


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


# -- building ---------------------------------------------------------------------------------------------------------
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


def _pip(python: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, timeout=timeout)


def _fetch_sdist(spec: str, into: Path) -> Path:
    """Download the source distribution ``name==version`` and unpack it; returns the unpacked directory."""
    download = into / "download"
    result = _pip(Path(sys.executable), "download", "--no-deps", "--no-binary", ":all:",
                  "-d", str(download), spec)
    archives = sorted(download.glob("*")) if download.exists() else []
    if result.returncode != 0 or not archives:
        raise ForageError(f"could not download the source distribution of {spec}: "
                                f"{(result.stderr.strip().splitlines() or ['no archive'])[-1][:300]}")
    archive, unpacked = archives[0], into / "unpacked"
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(unpacked)
    else:
        with tarfile.open(archive) as handle:
            handle.extractall(unpacked, filter="data")
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise ForageError(f"{archive.name}: expected one top-level directory")
    return tops[0]


def source_key(source: str, python: str) -> tuple[str, str]:
    """(cache key, kind) of an environment source: a local directory's content or a PyPI ``name==version``."""
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    digest = hashlib.sha256(f"{version}\0".encode())
    path = Path(source)
    if path.is_dir():
        files = subprocess.run(git_command(path, "ls-files", "-co", "--exclude-standard"), capture_output=True,
                               text=True, env=git_environment())
        names = files.stdout.split() if files.returncode == 0 else [
            str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and ".git" not in p.parts]
        for name in sorted(names):
            file = path / name
            if file.is_file():
                digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
        kind = "local"
        label = path.resolve().name
    elif "==" in source:
        digest.update(source.encode())
        kind, label = "pypi", source.replace("==", "-")
    else:
        raise ForageError(f"{source}: not a directory and not a PyPI 'name==version'")
    return f"{label}-{digest.hexdigest()[:12]}", kind


def function_map(tree: Path) -> dict[str, tuple[int, int]]:
    """``path::qualname`` -> (first body line, last line) of every function in the repository's non-test code."""
    out: dict[str, tuple[int, int]] = {}
    for file in sorted(tree.rglob("*.py")):
        rel = str(file.relative_to(tree))
        if is_test_file(rel) or any(part.startswith(".") for part in Path(rel).parts):
            continue
        try:
            module = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for name, node in functions(module):
            out[f"{rel}::{name}"] = (node.body[0].lineno, node.end_lineno)
    return out


def order_dependent_lines(forward: dict[str, dict[str, list[str]]],
                          backward: dict[str, dict[str, list[str]]]) -> dict[str, list[int]]:
    """The lines whose set of tests differs between a run of the suite and a run in reverse order."""
    out = {}
    for rel in sorted({*forward, *backward}):
        ahead, behind = forward.get(rel, {}), backward.get(rel, {})
        lines = sorted(int(n) for n in {*ahead, *behind} if set(ahead.get(n, ())) != set(behind.get(n, ())))
        if lines:
            out[rel] = lines
    return out


def coverage_by_function(tree: Path, line_coverage: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """Which tests run each function: the union of the tests that ran any line of its body (nested functions
    count for themselves only)."""
    functions = function_map(tree)
    by_file: dict[str, list[tuple[str, int, int]]] = {}
    for key, (first, last) in functions.items():
        by_file.setdefault(key.split("::")[0], []).append((key, first, last))
    out: dict[str, set[str]] = {}
    for rel, lines in line_coverage.items():
        spans = sorted(by_file.get(rel, []), key=lambda s: s[2] - s[1])  # innermost first
        for line, tests in lines.items():
            number = int(line)
            for key, first, last in spans:
                if first <= number <= last:
                    out.setdefault(key, set()).update(tests)
                    break
    return {key: sorted(tests) for key, tests in sorted(out.items())}


def build_environment(source: str, cache: str | Path, *, python: str = sys.executable, backend: str = "auto",
                      rebuild: bool = False, progress=None) -> Environment:
    """Build (or reuse) the environment of ``source``; see the module docstring. ``progress``: a callable taking
    a one-line message."""
    say = progress or (lambda message: None)
    cache = Path(cache).resolve()
    key, kind = source_key(source, python)
    path = cache / key
    if (path / "env.json").exists() and not rebuild:
        env = Environment.open(path)
        if env.info.get("format") == ENV_FORMAT:  # else built by an older opencwm: built again
            return env
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f".{key}.{uuid.uuid4().hex[:6]}.tmp"
    building.mkdir()
    start = time.monotonic()
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    info: dict = {"source": source, "kind": kind, "key": key, "python": python, "python_version": version,
                  "format": ENV_FORMAT}
    try:
        _build(source, kind, building, python, backend, info, say)
        info["status"] = "ok"
    except (ForageError, subprocess.SubprocessError, OSError) as exc:
        info.update(status="build_failed", error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
    info["build_seconds"] = round(time.monotonic() - start, 1)
    (building / "env.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(building, path)
    return Environment(path, info)


def find_environment(source: str, cache: str | Path, *, python: str = sys.executable) -> Environment:
    """The built environment named by ``source``: an environment directory, or the source it was built from (a
    repository directory or ``name==version``) looked up in ``cache``. One-line errors say what to run."""
    if (Path(source) / "env.json").exists():
        env = Environment.open(source)
    else:
        key, _ = source_key(source, python)
        env = Environment.open(Path(cache).resolve() / key) if (Path(cache) / key / "env.json").exists() else None
        if env is None:
            raise ForageError(f"{source}: no environment of it in {cache} (build one: opencwm forage env {source}"
                              f" --cache {cache})")
    if not env.ok:
        raise ForageError(f"{env.path}: the environment did not build ({env.info.get('error')}); to try again: "
                          f"opencwm forage env {env.info.get('source', 'SOURCE')} --rebuild")
    return env


def _build(source: str, kind: str, path: Path, python: str, backend: str, info: dict, say) -> None:
    repo = path / "repo"
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "pypi":
            say(f"downloading {source}")
            unpacked = _fetch_sdist(source, Path(tmp))
        else:
            unpacked = Path(source)
        ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".tox", ".venv", "build", "dist")
        shutil.copytree(unpacked, repo, ignore=ignore, symlinks=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "-m", f"baseline of {source}", "--no-verify")
    info["base_commit"] = git(repo, "rev-parse", "HEAD").strip()

    say("creating the virtual environment")
    subprocess.run([python, "-m", "venv", str(path / "venv")], check=True, capture_output=True)
    venv_python = path / "venv" / "bin" / "python"
    extras = ",".join(TEST_EXTRAS)
    report = path / "install-report.json"
    say("installing the package and its test dependencies")
    result = _pip(venv_python, "install", "-q", "--report", str(report), f"{repo}[{extras}]", "pytest", COVERAGE)
    if result.returncode != 0:
        raise ForageError(f"pip install failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    for name in REQUIREMENT_FILES:
        if (repo / name).is_file():
            result = _pip(venv_python, "install", "-q", "-r", str(repo / name))
            if result.returncode != 0:
                raise ForageError(f"pip install -r {name} failed: "
                                        f"{(result.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    if any((repo / name).is_file() for name in REQUIREMENT_FILES):  # they may pin a coverage.py without contexts
        _pip(venv_python, "install", "-q", COVERAGE)
    installed = json.loads(report.read_text()).get("install", [])
    own = [item["metadata"]["name"] for item in installed
           if "dir_info" in item.get("download_info", {})]  # installed from a local directory: the repo
    if own:  # tests must import the work tree's code, not an installed copy
        _pip(venv_python, "uninstall", "-y", *own)
    info["distribution"] = own[0] if own else None
    install_plugin(path)

    env = Environment(path, info)
    say("baseline test run (1/2, with coverage)")
    tree = env.checkout(parent=path / "work")
    try:
        first = env.run_tests(tree, coverage=True, backend=backend)
        for older in PYTEST_FALLBACKS:  # suites written for an older pytest (removed hooks, arguments)
            if first.status == "ok" and first.outcomes:
                break
            say(f"the suite did not run with the newest pytest; trying {older}")
            if _pip(venv_python, "install", "-q", older, COVERAGE).returncode != 0:
                break
            Environment.reset(tree, info["base_commit"])
            first = env.run_tests(tree, coverage=True, backend=backend)
        if first.status != "ok" or not first.outcomes:
            raise ForageError(f"the test suite did not run ({first.status}): "
                                    f"{first.output.strip().splitlines()[-1:] or ['no output']}")
        info["pytest"] = subprocess.run([str(venv_python), "-c", "import pytest; print(pytest.__version__)"],
                                        capture_output=True, text=True).stdout.strip()
        Environment.reset(tree, info["base_commit"])
        say("baseline test run (2/2, in reverse order, with coverage)")
        second = env.run_tests(tree, coverage=True, reverse=True, backend=backend)
    finally:
        Environment.discard(tree)
    tests = dict(sorted(first.outcomes.items()))
    info["tests"] = tests
    info["flaky"] = sorted(t for t in tests if second.outcomes.get(t) != tests[t])
    info["passing"] = sum(1 for t, o in tests.items() if o == "passed" and t not in info["flaky"])
    info["coverage"] = coverage_by_function(repo, first.coverage)
    files = sorted({*first.coverage, *second.coverage})
    info["executed_lines"] = {rel: sorted({int(n) for run in (first, second) for n in run.coverage.get(rel, {})})
                              for rel in files}
    info["order_dependent_lines"] = order_dependent_lines(first.coverage, second.coverage)
    info["test_seconds"] = first.seconds

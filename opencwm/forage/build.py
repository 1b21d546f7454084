"""Building an environment (``build_environment``): the repository as a git repository (a git repository's own
history kept, built at any of its commits: ``commit=``), a virtual environment with
its dependencies and pytest, the baseline run twice (the second time in reverse order: tests whose outcomes disagree
are flaky or depend on test order and are left out, and lines whose tests change with the order are recorded), and
the coverage map of which tests run which functions. Built once per content and cached (``default_cache``: the
user's cache directory unless told otherwise); ``find_environment`` finds a built one by its source.

Building installs packages from PyPI outside the sandbox (like a Docker image build); the tests run in the sandbox.
A build that fails leaves ``env.json`` with ``status: build_failed`` and the reason; it is not retried unless asked
(``rebuild=True``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from opencwm.forage.environment import (
    Environment,
    ForageError,
    git,
    git_command,
    git_environment,
    install_plugin,
    is_test_file,
)
from opencwm.forage.mutate import functions
from opencwm.forage.testrun import TEST_EXTRAS

ENV_FORMAT = 3  # what env.json holds; 2: executed lines recorded; 3: import-time code, order-dependent lines
COVERAGE = "coverage>=5"  # dynamic contexts (per-test coverage)
PYTEST_FALLBACKS = ("pytest<9", "pytest<8")  # tried in turn when the suite does not run with the newest pytest
REQUIREMENT_FILES = ("requirements-test.txt", "requirements_test.txt", "test-requirements.txt",
                     "test_requirements.txt", "requirements-tests.txt", "requirements/test.txt",
                     "requirements/tests.txt", "tests/requirements.txt")

CACHE_VARIABLE = "OPENCWM_CACHE"


def default_cache() -> Path:
    """Where environments are cached unless told: ``$OPENCWM_CACHE/envs``, else the user's cache directory
    (``$XDG_CACHE_HOME/opencwm/envs``, by default ``~/.cache/opencwm/envs``)."""
    root = os.environ.get(CACHE_VARIABLE)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opencwm"
    return Path(root) / "envs"


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


@functools.lru_cache(maxsize=8)
def python_version(python: str) -> str:
    """The version of the interpreter ``python`` (asked once per process)."""
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                          text=True).stdout.strip()


def is_git_repository(path: Path) -> bool:
    """Whether ``path`` is the top of a git repository (its history is kept in the environment)."""
    return (path / ".git").exists()


def resolve_commit(repo: Path, commit: str) -> str:
    """The full hash of ``commit`` (a hash, a prefix, a tag or a branch) in the git repository ``repo``."""
    result = subprocess.run(git_command(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"),
                            capture_output=True, text=True, env=git_environment())
    if result.returncode != 0:
        raise ForageError(f"{repo}: no commit {commit}")
    return result.stdout.strip()


def worktree_files(path: Path) -> list[str]:
    """The files of a directory as its owner sees them: git's tracked and untracked, not ignored, files (every file
    but ``.git``'s when it is no repository)."""
    listed = subprocess.run(git_command(path, "ls-files", "-co", "--exclude-standard"), capture_output=True,
                            text=True, env=git_environment())
    if listed.returncode == 0:
        return listed.stdout.splitlines()
    return [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and ".git" not in p.parts]


def source_key(source: str, python: str, commit: str | None = None) -> tuple[str, str]:
    """(cache key, kind) of an environment source: a local directory's content (a git repository's at ``commit``,
    or its checked-out state: HEAD and any uncommitted changes) or a PyPI ``name==version``."""
    digest = hashlib.sha256(f"{python_version(python)}\0".encode())
    path = Path(source)
    if commit is not None and not (path.is_dir() and is_git_repository(path)):
        raise ForageError(f"{source}: --commit needs a git repository (a directory with .git)")
    if path.is_dir() and commit is not None:
        sha = resolve_commit(path, commit)
        digest.update(f"commit\0{sha}".encode())
        return f"{path.resolve().name}-{sha[:10]}-{digest.hexdigest()[:12]}", "git"
    if path.is_dir():
        names = worktree_files(path)
        if is_git_repository(path):  # the history is part of the environment
            digest.update(f"head\0{resolve_commit(path, 'HEAD')}\0".encode())
        for name in sorted(names):
            file = path / name
            if file.is_file():
                digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
        kind = "git" if is_git_repository(path) else "local"
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
                      rebuild: bool = False, progress=None, commit: str | None = None) -> Environment:
    """Build (or reuse) the environment of ``source``; see the module docstring. A git repository keeps its
    history, built at ``commit`` (default: as checked out, uncommitted changes in a commit of their own on top).
    ``progress``: a callable taking a one-line message."""
    say = progress or (lambda message: None)
    cache = Path(cache).resolve()
    key, kind = source_key(source, python, commit)
    path = cache / key
    if (path / "env.json").exists() and not rebuild:
        env = Environment.open(path)
        if env.info.get("format") == ENV_FORMAT:  # else built by an older opencwm: built again
            return env
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f".{key}.{uuid.uuid4().hex[:6]}.tmp"
    building.mkdir()
    start = time.monotonic()
    info: dict = {"source": source, "kind": kind, "key": key, "python": python,
                  "python_version": python_version(python), "format": ENV_FORMAT}
    if commit is not None:
        info["commit"] = commit
    try:
        _build(source, kind, building, python, backend, info, say, commit)
        info["status"] = "ok"
    except (ForageError, subprocess.SubprocessError, OSError) as exc:
        info.update(status="build_failed", error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
    info["build_seconds"] = round(time.monotonic() - start, 1)
    (building / "env.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(building, path)
    return Environment(path, info)


def find_environment(source: str, cache: str | Path, *, python: str = sys.executable,
                     commit: str | None = None) -> Environment:
    """The built environment named by ``source``: an environment directory, or the source it was built from (a
    repository directory, at ``commit`` if given, or ``name==version``) looked up in ``cache``. One-line errors say
    what to run."""
    path = Path(source) if (Path(source) / "env.json").exists() else \
        Path(cache) / source_key(source, python, commit)[0]
    if not (path / "env.json").exists():
        raise ForageError(f"{source}: no environment of it in {cache} (build one: opencwm forage env {source}"
                          f" --cache {cache})")
    env = Environment.open(path)
    if not env.ok:
        raise ForageError(f"{env.path}: the environment did not build ({env.info.get('error')}); to try again: "
                          f"opencwm forage env {env.info.get('source', 'SOURCE')} --rebuild")
    return env


def copy_history(source: Path, repo: Path, commit: str | None) -> None:
    """The git repository ``source`` with its history (every branch and tag) into ``repo``, checked out at
    ``commit`` (default: HEAD plus the source's uncommitted changes, committed on top). Host-side git, hardened
    as every call: the source's configuration, hooks and attributes are never read or run (only its objects and
    refs are fetched)."""
    git(repo.parent, "init", "-q", "-b", "main", str(repo))
    git(repo, "fetch", "-q", "--no-tags", str(source.resolve()), "+refs/heads/*:refs/source/heads/*",
        "+refs/tags/*:refs/source/tags/*", "+HEAD:refs/source/HEAD")
    git(repo, "checkout", "-q", "-f", "-B", "main", resolve_commit(source, commit or "HEAD"))
    if commit is not None:
        return
    listed = worktree_files(source)
    for name in git(repo, "ls-files").splitlines():  # the source's files as they are now decide, committed or not
        (repo / name).unlink(missing_ok=True)
    for name in listed:
        file, target = source / name, repo / name
        if file.is_symlink() or file.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            shutil.copy2(file, target, follow_symlinks=False)
    git(repo, "add", "-A")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", f"uncommitted changes of {source}", "--no-verify")


def _build(source: str, kind: str, path: Path, python: str, backend: str, info: dict, say,
           commit: str | None = None) -> None:
    repo = path / "repo"
    if kind == "git":
        say(f"copying {source} with its history" + (f" at {commit}" if commit else ""))
        copy_history(Path(source), repo, commit)
    else:
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

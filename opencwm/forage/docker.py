"""The Docker backend for environments (``--sandbox docker``): test runs (baseline, validation, grading, rewards)
and the agent's bash session run in containers of a Docker engine, through the ``docker`` command.

The image needs no registry: ``image`` assembles a root filesystem from this machine and imports it (``docker
import``) -- the environment's interpreter (its standard library) and the shared libraries it and the venv's
extension modules load, bash, the core tools and git an agent uses, and the environment's venv and results plugin
at their own paths, so a container runs what the local sandbox runs with the same paths (coverage maps and
failure texts agree). The tag is a digest of what went in, so an environment whose venv changed (a pytest fallback
installed during its build) gets a new image.

Containers run with no network, a read-only root filesystem, no capabilities, no new privileges, limits on
processes and memory, a size-limited ``/tmp`` of their own; the only host path they may write is the work tree
(and, for test runs, a directory for the results). A run past its time is killed with its container.

Without an engine ``engine()`` says why, and callers say so in one line; the local sandbox needs none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from opencwm.forage.testrun import PLUGIN, ForageError, TestRun, read_results
from opencwm.sandbox.isolation import WRITABLE_AREA
from opencwm.sandbox.shell import DEFAULT_MAX_OUTPUT, Shell

# What an agent's commands and a test suite may call inside a container.
TOOLS = ("bash", "sh", "env", "ls", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "touch", "echo", "printf", "head",
         "tail", "grep", "egrep", "sed", "awk", "find", "xargs", "sort", "uniq", "wc", "diff", "patch", "timeout",
         "stat", "readlink", "realpath", "dirname", "basename", "chmod", "tr", "cut", "tee", "sleep", "true",
         "false", "pwd", "base64", "git", "which", "id", "uname", "date", "test", "expr", "seq", "ln", "du", "df",
         "cmp", "nl", "od", "file", "less", "more", "mktemp")
STDLIB_LEFT_OUT = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "pydoc_data"}
PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def limits(processes: int, memory_mb: int | None, tmp_mb: int) -> list[str]:
    """A container's isolation: no network, a read-only root, no capabilities or new privileges, at most
    ``processes`` processes and ``memory_mb`` of memory (swap included), a private ``/tmp`` of ``tmp_mb``."""
    memory = ["--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m"] if memory_mb else []
    return ["--network", "none", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--pids-limit", str(processes), "--ipc", "private", *memory,
            "--tmpfs", f"{WRITABLE_AREA}:rw,size={tmp_mb}m,exec"]


def docker(*args: str, input: bytes | None = None, timeout: float | None = 120) -> subprocess.CompletedProcess:
    """The ``docker`` command (raises ForageError when it cannot run at all)."""
    try:
        return subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise ForageError("--sandbox docker: the docker command is not installed (Debian: apt-get install "
                          "docker.io)") from None


def engine() -> str | None:
    """None when a Docker engine answers, else why not (one line)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (Debian: apt-get install docker.io)"
    try:
        answer = docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    if answer.returncode != 0:
        last = (answer.stderr.decode("utf-8", "replace").strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine reachable ({last[:200]})"
    return None


@contextlib.contextmanager
def local_engine(data_root: str | Path = "/var/lib/docker", timeout: float = 60):
    """A Docker engine for the duration of the block: the one that answers, else (as root, with Debian's
    ``docker.io`` installed) a ``dockerd`` started here -- vfs storage, no iptables, no bridge, the machine's
    default data root so imported images stay cached -- and stopped afterwards. Yields None, or why there is no
    engine."""
    why = engine()
    if why is None or shutil.which("dockerd") is None or os.geteuid() != 0:
        yield why
        return
    with tempfile.TemporaryDirectory(prefix="opencwm-dockerd-") as scratch, \
            open(Path(scratch) / "dockerd.log", "wb") as log:
        daemon = subprocess.Popen(["dockerd", "--storage-driver=vfs", "--iptables=false", "--bridge=none",
                                   "--data-root", str(data_root), "--pidfile", f"{scratch}/dockerd.pid"],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while (why := engine()) is not None and daemon.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            if why is not None:
                tail = (Path(scratch) / "dockerd.log").read_text(errors="replace").strip().splitlines()[-1:]
                why = f"dockerd did not start ({(tail or ['no output'])[0][:200]})"
            yield why
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def require_engine() -> None:
    why = engine()
    if why is not None:
        raise ForageError(f"--sandbox docker: {why}")


# -- the image --------------------------------------------------------------------------------------------------
def _elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


@functools.lru_cache(maxsize=4096)
def _libraries(path: str) -> tuple[str, ...]:
    """The shared libraries ``path`` loads (ldd), the loader included."""
    result = subprocess.run(["ldd", path], capture_output=True, text=True)
    found = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            found.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            found.append(parts[0])
    return tuple(found)


def _interpreter(env) -> tuple[Path, Path]:
    """(the real interpreter file, its installation prefix) of an environment's venv."""
    python = Path(os.path.realpath(env.venv / "bin" / "python"))
    prefix = subprocess.run([str(env.venv / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return python, Path(prefix)


def root_files(env) -> list[Path]:
    """Every host path the image holds (files, links and the directories to walk), before the link closure."""
    python, prefix = _interpreter(env)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = next((p for p in (prefix / "lib").glob("python3*") if p.is_dir()), prefix / "lib" / version)
    paths = [python, *prefix.glob("bin/python3*"), *prefix.glob("lib/libpython3*")]
    paths += [child for child in stdlib.iterdir() if child.name not in STDLIB_LEFT_OUT]
    paths += [p for p in env.venv.rglob("*.so*") if p.is_file()]  # for the libraries they load
    paths += [Path(tool) for tool in map(shutil.which, TOOLS) if tool]
    paths += [Path(p) for p in ("/usr/lib/git-core", "/usr/share/git-core", "/bin", "/lib", "/lib64", "/sbin",
                                "/usr/lib/locale/C.utf8") if os.path.lexists(p)]
    return paths


def _canonical(path: Path) -> Path:
    """``path`` with every directory above it resolved (``/lib64/x`` is ``/usr/lib64/x`` on a merged-/usr
    system), the last part kept as it is (a link stays a link)."""
    return Path(os.path.realpath(path.parent)) / path.name


def _walk(paths: list[Path]) -> list[Path]:
    """The files under ``paths`` at their canonical paths, links kept as links with what they point to, every ELF
    file's shared libraries too; sorted. A link to a directory is kept without walking the directory."""
    out: set[Path] = set()
    queue = [p if str(p.parent) == "/" else _canonical(p) for p in paths]
    while queue:
        path = queue.pop()
        if path in out or not os.path.lexists(path):
            continue
        out.add(path)
        if path.is_symlink():
            if not os.path.isdir(path):
                queue.append(Path(os.path.realpath(path)))
        elif path.is_dir():
            queue.extend(_canonical(child) for child in path.iterdir())
        elif path.is_file() and _elf(path):
            queue.extend(_canonical(Path(lib)) for lib in _libraries(str(path)))
    return sorted(out)


_PRESENT: set[str] = set()  # image tags this process saw in the engine


def _site_digest(env) -> str:
    """What the venv holds (its installed distributions), for the image's tag."""
    names = sorted(p.name for p in env.venv.glob("lib/python3*/site-packages/*.dist-info"))
    plugin = (env.path / "plugin" / f"{PLUGIN}.py").read_bytes() if (env.path / "plugin").is_dir() else b""
    return hashlib.sha256(json.dumps([str(env.path), names, TOOLS]).encode() + plugin).hexdigest()[:12]


def image(env) -> str:
    """The environment's image (imported once per venv state); returns its tag."""
    tag = f"opencwm-env:{env.info['key'].lower()[:80]}-{_site_digest(env)}"
    if tag in _PRESENT:  # (asked once per process: every test run of a validation asks)
        return tag
    require_engine()
    if docker("image", "inspect", tag).returncode == 0:
        _PRESENT.add(tag)
        return tag
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        files = _walk(root_files(env))
        parents = sorted({str(parent).lstrip("/") for path in files for parent in path.parents} - {""})
        for name in parents:  # every directory searchable (docker import makes missing ones 0600)
            if not os.path.islink("/" + name):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
        for path in files:
            if not (path.is_dir() and not path.is_symlink()):
                archive.add(path, arcname=str(path).lstrip("/"), recursive=False)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):  # not the host's accounts
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text), 0o644
            archive.addfile(info, io.BytesIO(text.encode()))
        for name in sorted({"tmp", "etc", "dev", "proc", "sys"} - set(parents)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            archive.addfile(info)
    imported = docker("import", "-", tag, input=buffer.getvalue(), timeout=600)
    if imported.returncode != 0:
        raise ForageError(f"docker import failed: {imported.stderr.decode('utf-8', 'replace').strip()[:300]}")
    _PRESENT.add(tag)
    return tag


def _environment_args(environment: dict[str, str]) -> list[str]:
    return [arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")]


def environment_volumes(env) -> list[str]:
    """The environment's venv, results plugin and repository (which work trees borrow git objects from), read-only
    at their own paths: what the local sandbox shows of an environment."""
    return [arg for path in (env.venv, env.path / "plugin", env.repo) for arg in ("--volume", f"{path}:{path}:ro")]


def _remove(name: str) -> None:
    docker("rm", "-f", name, timeout=60)


# -- test runs ----------------------------------------------------------------------------------------------------
def run_tests(env, tree: Path, tests: list[str] | None, args: list[str], environment: dict[str, str], *,
              coverage: bool = False, timeout: float = 900, max_output: int = 20_000,
              memory_mb: int = 4096) -> TestRun:
    """Run pytest (``args``) on ``tree`` in a container of the environment's image, as the local sandbox runs it:
    the same paths, variables and plugin; the results come back through a directory of their own."""
    tag = image(env)
    out = tree.parent / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    results = out / "results.json"
    environment = {"HOME": WRITABLE_AREA, "TMPDIR": WRITABLE_AREA, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                   "PYTHONDONTWRITEBYTECODE": "1", **environment, **env.sandbox_env(tree),
                   "OPENCWM_FORAGE_RESULTS": str(results)}
    if coverage:
        environment["OPENCWM_FORAGE_COVERAGE"] = str(tree)
    if tests is not None:
        (out / "select.json").write_text(json.dumps(sorted(tests)))
        environment["OPENCWM_FORAGE_SELECT"] = str(out / "select.json")
    name = f"opencwm-test-{uuid.uuid4().hex[:12]}"
    argv = ["run", "--rm", "--name", name, *limits(512, memory_mb, 1024), *environment_volumes(env),
            "--volume", f"{tree}:{tree}:rw",
            "--volume", f"{tree / '.git'}:{tree / '.git'}:ro", "--volume", f"{out}:{out}:rw",
            "--workdir", str(tree), *_environment_args(environment), tag,
            str(env.venv / "bin" / "python"), "-m", "pytest", "-p", PLUGIN, *args]
    start = time.monotonic()
    try:
        finished = docker(*argv, timeout=timeout)
        status, output = "ok", (finished.stdout + finished.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired as expired:
        _remove(name)
        status, output = "timeout", ((expired.stdout or b"") + (expired.stderr or b"")).decode("utf-8", "replace")
    try:
        return read_results(results, status, output[-max_output:], round(time.monotonic() - start, 3))
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- the agent's shell --------------------------------------------------------------------------------------------
class DockerShell(Shell):
    """The agent's persistent bash session in a container of the environment's image: the work tree (its
    ``.git`` read-only) is the one writable host path, no network; a command past its time kills the container,
    and the next command gets a fresh one."""

    def __init__(self, env, tree: Path, *, environment: dict[str, str] | None = None, memory_mb: int | None = None,
                 disk_mb: int = 1024, max_output: int = DEFAULT_MAX_OUTPUT, max_processes: int = 256):
        self.backend = "docker"
        self.root = self.cwd = Path(tree).resolve()
        self.image, self.environment = image(env), env
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WRITABLE_AREA, "TMPDIR": WRITABLE_AREA,
                    "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "GIT_PAGER": "cat",
                    "PAGER": "cat", "TERM": "dumb", **(environment or {})}
        self.memory_mb, self.disk_mb, self.max_processes = memory_mb, disk_mb, max_processes
        self.max_output = max_output
        self._process = self._cgroup = self._launch = None
        self._oom_before = 0
        self.restarts = 0
        self._name = None

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close()
        self._name = f"opencwm-shell-{uuid.uuid4().hex[:12]}"
        git_dir = self.root / ".git"
        command = ["docker", "run", "--rm", "-i", "--name", self._name,
                   *limits(self.max_processes, self.memory_mb, self.disk_mb), *environment_volumes(self.environment),
                   "--volume", f"{self.root}:{self.root}:rw", "--volume", f"{git_dir}:{git_dir}:ro",
                   "--workdir", str(self.cwd), *_environment_args(self.env), self.image,
                   "bash", "--noprofile", "--norc"]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def close(self) -> None:
        process, self._process = self._process, None
        if self._name is not None:
            _remove(self._name)  # the container first: killing the client leaves it running
            self._name = None
        if process is not None:
            process.kill()
            process.wait()

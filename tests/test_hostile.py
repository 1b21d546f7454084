"""Hostile programs against the sandbox, on every isolating backend that works here: each attack of the threat
model (README, "Sandbox") is contained with the right status, the host is untouched, and the next job (or item of
the same collection) is unaffected -- its value checked against the real interpreter. Also: each defence layer
holds its own probes in ``opencwm sandbox check``, and nothing leaks (cgroups, scratch directories) after a close
or a ``kill -9``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import working_backend

from opencwm.sandbox import (
    CRASH,
    DISK,
    EXCEPTION,
    KILLED,
    LAYERS,
    MEMORY,
    OK,
    TIMEOUT,
    Sandbox,
    SandboxConfig,
)
from opencwm.sandbox.cgroup import _own_group
from opencwm.sandbox.check import WIDTH, run_checks
from opencwm.shards import read_manifest
from opencwm.trace.collect import read_traces

REPO = Path(__file__).resolve().parent.parent
OPENCWM = [sys.executable, "-m", "opencwm.cli"]
EVALUATE = "opencwm.sandbox.probe:evaluate"
ECHO = "opencwm.sandbox.probe:echo"


ISOLATING = [b for b in ("bwrap", "unshare") if working_backend(b)] or [pytest.param("none", marks=pytest.mark.skip(
    reason="no isolating backend (bubblewrap or unshare) works here"))]


def _config(backend: str, **overrides) -> SandboxConfig:
    settings = {"backend": backend, "timeout": 5, "memory_mb": 256, "disk_mb": 32, "disk_inodes": 2048,
                "max_processes": 64, "preload": ("opencwm.sandbox.probe",)}
    return SandboxConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", params=ISOLATING)
def box(request):
    sandbox = Sandbox(_config(request.param))
    sandbox.start()
    yield sandbox
    sandbox.close()


def _next_job_is_unaffected(box: Sandbox) -> None:
    token = uuid.uuid4().hex
    outcome = box.run(EVALUATE, code=f"import json\nresult = [len([1, 2, 3]), json.dumps({token!r})]")
    assert outcome.status == OK and outcome.result == [3, json.dumps(token)]


def _opencwm(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*OPENCWM, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


# -- 1. host filesystem writes ---------------------------------------------------------------------------------------
MOUNT_ESCAPE = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "libc.mount(None, b'/', None, 0x20 | 0x1000, None)\nlibc.umount2(b'/tmp', 2)\n")


def test_remounting_the_root_cannot_write_the_host(box, tmp_path):
    markers = [Path("/root") / f"marker-{uuid.uuid4().hex}", Path("/tmp") / f"marker-{uuid.uuid4().hex}"]
    code = MOUNT_ESCAPE + "errors = []\n" + "".join(
        f"try:\n    open({str(m)!r}, 'w').write('x')\nexcept OSError as exc:\n    errors.append(exc.errno)\n"
        for m in markers) + "result = [libc.mount(None, b'/', None, 0x20 | 0x1000, None), ctypes.get_errno(), errors]"
    outcome = box.run(EVALUATE, code=code)
    assert outcome.status == OK and outcome.result[:2] == [-1, 1]  # EPERM
    assert not any(m.exists() for m in markers)
    _next_job_is_unaffected(box)


def test_links_cannot_reach_host_files(box, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("host")
    with Sandbox(replace(box.config, visible_paths=(str(tmp_path),))) as shown:
        code = (f"import os\nos.symlink({str(victim)!r}, 'link')\nerrors = []\n"
                f"for action in (lambda: open('link', 'w').write('x'), lambda: os.link({str(victim)!r}, 'hard'),\n"
                f"               lambda: os.link('/etc/passwd', 'hard2')):\n"
                f"    try:\n        action()\n    except OSError as exc:\n        errors.append(exc.strerror)\n"
                f"result = errors")
        outcome = shown.run(EVALUATE, code=code)
    assert outcome.status == OK and len(outcome.result) == 3, outcome
    assert victim.read_text() == "host"


# -- 3. forged results -----------------------------------------------------------------------------------------------
def test_the_fork_server_is_out_of_reach(box):
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nppid = os.getppid()\nresult = {}\n"
            "result['ptrace'] = (libc.ptrace(16, ppid, 0, 0), ctypes.get_errno())\n"
            "buffer = ctypes.create_string_buffer(8)\n"
            "local = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 8)\n"
            "result['vm_write'] = (libc.process_vm_writev(ppid, local, 1, local, 1, 0), ctypes.get_errno())\n"
            "for path, flags in ((f'/proc/{ppid}/mem', os.O_RDWR), (f'/proc/{ppid}/fd/1', os.O_WRONLY),\n"
            "                    (f'/proc/{ppid}/environ', os.O_RDONLY)):\n"
            "    try:\n        os.close(os.open(path, flags))\n        result[path] = 'opened'\n"
            "    except OSError as exc:\n        result[path] = exc.errno\n")
    outcome = box.run(EVALUATE, code=code)
    assert outcome.status == OK
    assert outcome.result["ptrace"] == [-1, 1] and outcome.result["vm_write"][0] == -1
    assert "opened" not in outcome.result.values(), outcome.result
    _next_job_is_unaffected(box)


def test_a_forged_reply_never_answers_for_another_job(box):
    """Whatever a job writes wherever it can, the next jobs get their own results: the reply pipe is per job, and
    a reply whose id is not the request's is refused (the sandbox restarts)."""
    forged = json.dumps({"id": 0, "status": "ok", "result": "FORGED"})
    code = ("import os\nfor fd in range(64):\n    for i in range(1, 12):\n        try:\n"
            f"            os.write(fd, {forged!r}.replace('\"id\": 0', f'\"id\": {{i}}').encode() + b'\\n')\n"
            "        except OSError:\n            break\n")
    box.run(EVALUATE, code=code)
    for n in range(10):
        assert box.run(ECHO, value=n).result == n


# -- 4, 5. memory and disk ------------------------------------------------------------------------------------------
def test_memory_is_limited_across_the_jobs_processes(box):
    code = ("import os, time\nkids = []\nfor _ in range(5):\n    pid = os.fork()\n    if pid == 0:\n"
            "        block = bytearray(100 * 1024 * 1024)\n        for i in range(0, len(block), 4096):\n"
            "            block[i] = 1\n        time.sleep(2)\n        os._exit(0)\n    kids.append(pid)\n"
            "for pid in kids:\n    os.waitpid(pid, 0)")
    if not box._cgroup or not box._cgroup.caps_memory:
        pytest.skip("no memory cgroup for this user here")
    outcome = box.run(EVALUATE, code=code, timeout=30)
    assert outcome.status == MEMORY, outcome
    _next_job_is_unaffected(box)


@pytest.mark.parametrize("what", ["one big file", "many files"])
def test_the_writable_area_is_size_limited_and_on_no_host_disk(box, what):
    before = set(os.listdir("/tmp"))
    code = ("with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1024 * 1024))"
            if what == "one big file" else
            "import os\nfor i in range(4096):\n    open(f'file-{i}', 'w').close()")
    outcome = box.run(EVALUATE, code=code, timeout=30)
    assert outcome.status == DISK, outcome
    assert set(os.listdir("/tmp")) - before <= {p for p in set(os.listdir("/tmp")) if p.startswith("pytest")}
    _next_job_is_unaffected(box)


def test_a_full_area_is_reported_even_when_the_job_swallows_the_error(box):
    code = "try:\n    open('big', 'wb').write(bytes(40 * 1024 * 1024))\nexcept OSError:\n    pass\nresult = 1"
    assert box.run(EVALUATE, code=code).status == DISK


# -- 6, 7. secrets and shared state ----------------------------------------------------------------------------------
def test_host_secrets_and_homes_are_not_there(box):
    code = ("import os\nresult = {p: os.path.exists(p) for p in ('/etc/shadow', '/etc/gshadow', '/etc/ssh', "
            "'/root/.bashrc', '/root/.ssh', '/var/log', '/home')}")
    outcome = box.run(EVALUATE, code=code)
    assert outcome.status == OK and not any(outcome.result.values()), outcome.result


def test_every_job_starts_from_a_fresh_writable_area(box):
    places = "('.', os.environ['HOME'], os.environ['TMPDIR'], '/tmp', '/dev/shm')"
    box.run(EVALUATE, code=f"import os\nfor d in {places}:\n    open(os.path.join(d, 'left'), 'w').write('x')\n"
                           "os.makedirs('deep/er', exist_ok=True)\nos.chmod('deep', 0)")
    # (host paths shown below /tmp, such as a checkout there, keep their mount points: nothing else remains)
    outcome = box.run(EVALUATE, code=f"import os\nresult = sorted({{'left', 'deep'}} & set(os.listdir('.'))) + "
                                    f"[d for d in {places} if os.path.exists(os.path.join(d, 'left'))]")
    assert outcome.status == OK and outcome.result == [], outcome.result


def test_monkeypatching_does_not_reach_the_next_job(box):
    box.run(EVALUATE, code="import builtins, sys\nbuiltins.len = lambda x: 0\nsys.modules['json'] = None")
    _next_job_is_unaffected(box)


# -- the ones contained before, each with its status -----------------------------------------------------------------
@pytest.mark.parametrize("name, code, statuses", [
    ("endless loop in one C call", "import itertools\nresult = sum(itertools.count())", {TIMEOUT}),
    ("deep recursion", "def f(n):\n    return f(n + 1) + 1\nf(0)", {EXCEPTION}),
    ("deep recursion past its limit",  # Python frames on the heap until memory runs out, or the C stack
     "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\nf(0)", {CRASH, EXCEPTION, MEMORY}),
    ("1 GB of output", "import os\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, chunk)\n"
                       "result = 'printed'", {OK}),
    ("a 300 MB result", "result = 'x' * (300 * 1024 * 1024)", {CRASH, MEMORY}),
    ("raising its limits", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", {EXCEPTION}),
    ("closing every descriptor", "import os\nos.closerange(0, 4096)\nresult = 1", {CRASH}),
    ("os._exit", "import os\nos._exit(3)", {CRASH}),
    ("stopping the fork server", "import os, signal, time\nos.kill(os.getppid(), signal.SIGSTOP)\ntime.sleep(30)",
     {KILLED, TIMEOUT}),
])
def test_contained_with_its_status(box, name, code, statuses):
    outcome = box.run(EVALUATE, code=code, timeout=3 if TIMEOUT in statuses else 20)
    assert outcome.status in statuses, (name, outcome)
    if name == "1 GB of output":
        assert outcome.result == "printed"
    _next_job_is_unaffected(box)


# -- the CLI: trace run, trace collect -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ISOLATING)
def test_trace_run_contains_the_escape_and_the_call_injection(backend, tmp_path):
    marker = REPO / "opencwm" / f"pwned-{uuid.uuid4().hex}"  # a host directory the sandbox shows, read-only
    program = tmp_path / "attack.py"
    program.write_text(MOUNT_ESCAPE.replace("\n", "\n    ").replace("import ctypes", "def f(x):\n    import ctypes", 1)
                       + f"open({str(marker)!r}, 'w').write('x')\n    return x\n")
    result = _opencwm("trace", "run", str(program), "--call", "f(1)", "--sandbox", backend, "--format", "json")
    assert result.returncode == 0 and not marker.exists()
    assert json.loads(result.stdout)["frames"][-1]["event"] == "exception"  # the write was refused
    injected = _opencwm("trace", "run", str(program), "--sandbox", backend, "--format", "json",
                        "--call", f"f(__import__('os').system('touch {marker}'))")
    assert not marker.exists(), injected.stderr


@pytest.mark.parametrize("backend", ISOLATING)
def test_trace_collect_keeps_every_good_item_beside_hostile_and_bad_ones(backend, tmp_path):
    """100 items, one with ``"code": 5``, one not JSON, hostile ones among them: every good item's value is the
    real interpreter's, each bad one is a row with status error and its reason, the host is untouched."""
    marker = REPO / "opencwm" / f"pwned-{uuid.uuid4().hex}"  # a host directory the sandbox shows, read-only
    lines = []
    for i in range(100):
        lines.append(json.dumps({"id": f"good-{i}", "code": f"def f(x):\n    y = x * {i}\n    return y + 1",
                                 "input": str(i)}))
    lines[50] = json.dumps({"id": "bad-type", "code": 5, "input": "1"})
    lines[60] = "{not json"
    lines[70] = json.dumps({"id": "escape", "code": "def f(x):\n" + "".join(
        "    " + line + "\n" for line in MOUNT_ESCAPE.splitlines()) + f"    open({str(marker)!r}, 'w')\n",
        "input": "0"})
    lines[80] = json.dumps({"id": "inject", "code": "def f(x):\n    return x", "input": f"__import__('os').system("
                            f"'touch {marker}')"})
    lines[90] = json.dumps({"id": "forge", "code": "import os\ndef f(x):\n    for fd in range(64):\n        try:\n"
                            "            os.write(fd, b'{\"id\": 1, \"status\": \"ok\"}\\n')\n        except OSError:\n"
                            "            pass\n    return x", "input": "7"})
    lines[95] = json.dumps({"id": "liar", "input": "1", "code": (  # a job that lies about its result's shape
        "import opencwm.trace.record as record\nreal = record.Trace.to_dict\n"
        "record.Trace.to_dict = lambda self: {**real(self), 'entry_lineno': 'nope', 'frames': [{'event': 5}]}\n"
        "def f(x):\n    return x")})
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = _opencwm("trace", "collect", str(source), "--out", str(tmp_path / "ds"), "--sandbox", backend,
                      "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: (row, trace) for row, trace in read_traces(tmp_path / "ds")}
    assert len(rows) == 100 and not marker.exists()
    for i in range(100):
        if f"good-{i}" in rows:
            namespace: dict = {}
            exec(f"def f(x):\n    y = x * {i}\n    return y + 1", namespace)
            assert rows[f"good-{i}"][1].return_value == repr(namespace["f"](i))
    assert rows["bad-type"][0]["status"] == "error" and "'code' must be a string" in rows["bad-type"][0]["error"]
    assert rows["line-61"][0]["status"] == "error" and "not valid JSON" in rows["line-61"][0]["error"]
    assert rows["escape"][1].frames[-1].event == "exception"
    assert rows["liar"][0]["status"] == "error" and "do not fit the schema" in rows["liar"][0]["error"]
    assert json.loads(result.stdout)["statuses"]["error"] == 3
    # the forger wrote over its own reply pipe too: its own result is lost (crash), never another item's
    assert rows["forge"][0]["status"] == "crash" or rows["forge"][1].return_value == "7"
    again = _opencwm("trace", "collect", str(source), "--out", str(tmp_path / "ds"), "--sandbox", backend, "--quiet")
    assert json.loads(again.stdout)["processed"] == 0


def test_statuses_say_why(tmp_path):
    program = tmp_path / "p.py"
    program.write_text("def f(n):\n    return f(n + 1) + 1\n\ndef g():\n    while True: pass\n")
    for tracer in ("native", "settrace"):
        result = _opencwm("trace", "run", str(program), "--call", "f(0)", "--tracer", tracer, "--format", "json")
        assert result.returncode == 1 and "RecursionError" in result.stderr, (tracer, result.stderr)
        assert json.loads(result.stdout)["status"] == "error"
    timed = _opencwm("trace", "run", str(program), "--call", "g()", "--timeout", "1", "--format", "json")
    assert timed.returncode == 1 and json.loads(timed.stdout)["status"] == "timeout"
    assert timed.stderr.count("\n") == 1 and "1 s limit" in timed.stderr


# -- 10. leaks -------------------------------------------------------------------------------------------------------
def _opencwm_groups() -> set[Path]:
    found = set()
    for controller in ("pids", "memory"):
        parent = _own_group(controller)
        if parent is not None:
            found.update(p for p in parent[0].glob("opencwm-*") if p.is_dir())
    return found


@pytest.mark.parametrize("backend", [*ISOLATING, "rlimits"])
def test_a_closed_sandbox_leaves_no_cgroup_and_no_scratch(backend):
    with Sandbox(_config(backend)) as sandbox:
        sandbox.run(EVALUATE, code="import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)")
        groups = set(sandbox._cgroup.groups.values())
        scratch = sandbox.scratch
    assert not [g for g in groups if g.exists()]
    assert scratch is None or not scratch.exists()


def test_a_killed_owners_groups_and_scratch_are_swept_by_the_next_sandbox(tmp_path):
    code = ("import os, sys, time\nfrom opencwm.sandbox import Sandbox, SandboxConfig\n"
            "box = Sandbox(SandboxConfig(backend='rlimits')); box.start()\n"
            "print(box.scratch, *box._cgroup.groups.values(), flush=True)\ntime.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               stderr=subprocess.DEVNULL)
    paths = [Path(p) for p in process.stdout.readline().split()]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert paths and all(p.exists() for p in paths)
    with Sandbox(SandboxConfig(backend="rlimits")):
        pass
    assert not [p for p in paths if p.exists()]


@pytest.mark.parametrize("backend", ISOLATING[:1])
def test_kill_9_at_random_moments_then_a_rerun_gives_every_item_once(backend, tmp_path):
    items = [{"id": f"item-{i}", "code": f"import time\ndef f(x):\n    time.sleep(0.01)\n    return x * {i % 7}",
              "input": str(i)} for i in range(300)]
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "ds"
    command = [*OPENCWM, "trace", "collect", str(source), "--out", str(out), "--workers", "2",
               "--rows-per-shard", "7", "--sandbox", backend, "--quiet"]
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids = [row["id"] for row, _ in read_traces(out)]
    assert sorted(ids) == sorted(i["id"] for i in items)  # every item exactly once
    for row, trace in read_traces(out):
        i = int(row["id"].split("-")[1])
        assert trace.return_value == repr(i * (i % 7))
    assert {p.name for p in out.glob("shard-*.parquet")} == {s["file"] for s in read_manifest(out)["shards"]}
    stale = [g for g in _opencwm_groups() if not Path(f"/proc/{g.name.split('-')[1]}").exists()]
    assert not stale  # the rerun swept the killed runs' groups
    assert not [p for p in Path("/tmp").glob("opencwm-sandbox-*")
                if not Path(f"/proc/{p.name.split('-')[2]}").exists()]


# -- 11. the self-test -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", *[b for b in ISOLATING if b != "bwrap"]])
def test_sandbox_check_holds_every_probe(backend):
    """As the README writes it (the best backend here), and on the other isolating backend."""
    if backend == "auto" and not [b for b in ISOLATING if b in ("bwrap", "unshare")]:
        pytest.skip("no isolating backend works here")
    result = _opencwm("sandbox", "check", *(["--sandbox", backend] if backend != "auto" else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and "probes held" in result.stdout


def test_sandbox_check_fails_on_the_rlimits_backend():
    result = _opencwm("sandbox", "check", "--sandbox", "rlimits", "--memory-mb", "256")
    assert result.returncode == 1 and "FAILED" in result.stdout and "WARNING" in result.stderr
    assert any(line.startswith("time limit") and " held " in line for line in result.stdout.splitlines())
    for guarantee in ("no network", "host secrets hidden", "read-only host"):
        assert guarantee in result.stdout.rsplit("FAILED:", 1)[1]


WHAT_EACH_LAYER_HOLDS = {
    "capabilities": {"no capabilities"},
    "seccomp": {"seccomp filter"},
    "mounts": {"host secrets hidden"},
    "cgroup": {"memory limit"},
    "tmpfs": {"disk limit", "fresh state per job"},
    "nondumpable": {"fork server out of reach"},
}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_holds_its_own_probes(layer):
    """A sandbox with one layer off fails exactly that layer's probes: each layer is tested on its own, and the
    check can tell a weakened configuration."""
    backend = next((b for b in ("bwrap", "unshare") if working_backend(b)), None)
    if backend is None:
        pytest.skip("no isolating backend works here")
    config = _config(backend, layers=tuple(x for x in LAYERS if x != layer), disk_mb=16, disk_inodes=1024)
    _, verdicts = run_checks(config)
    assert {v.guarantee for v in verdicts if not v.held} == WHAT_EACH_LAYER_HOLDS[layer]


@pytest.mark.slow  # a second interpreter as another user: a system check (make test-slow)
@pytest.mark.parametrize("backend, may_lack", [("bwrap", {"memory limit", "disk limit", "work tree limit"}),
                                               ("unshare", {"memory limit", "work tree limit"})])
def test_an_unprivileged_user_gets_the_guarantees_or_is_told_which_are_missing(backend, may_lack):
    """Run by a user (uid 65534) with the system's Python: every probe holds but those that need root here --
    the memory cgroup (no delegation to that user), a work tree's own tmpfs and, under bubblewrap, the tmpfs inode
    limit."""
    import shutil
    import tempfile

    import pyseccomp

    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    if os.geteuid() != 0 or setpriv is None or not Path(python).exists() or not working_backend(backend):
        pytest.skip("needs root (to become another user), setpriv, /usr/bin/python3 and the backend")
    copy = Path(tempfile.mkdtemp(prefix="opencwm-unprivileged-"))
    try:
        shutil.copytree(REPO / "opencwm", copy / "opencwm", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        shutil.copy(pyseccomp.__file__, copy)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        result = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
             "HOME=/tmp", f"PYTHONPATH={copy}", python, "-m", "opencwm.cli", "sandbox", "check", "--sandbox",
             backend, "--memory-mb", "256"], cwd="/", capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert f"backend {backend}" in result.stdout, result.stdout + result.stderr
    failed = {line[:WIDTH].strip() for line in result.stdout.splitlines() if " FAILED " in line}
    assert failed <= may_lack, result.stdout
    assert (result.returncode == 1) == bool(failed)


@pytest.mark.slow  # gVisor starts in seconds and forks in tens of milliseconds (make test-slow)
def test_gvisor_gives_every_guarantee_but_one(tmp_path):
    """gVisor (a user-space kernel) runs the same layout, runsc itself in a mount namespace where what the job
    reads is read-only in the host's kernel and its writable areas are host tmpfs with inode limits: every probe
    holds but the fork server's descriptors under gVisor's /proc (its random reply ids still stop forgery), and
    traces are the real interpreter's."""
    if not working_backend("gvisor"):
        pytest.skip("gVisor (runsc) does not work here")
    result = _opencwm("sandbox", "check", "--sandbox", "gvisor", "--memory-mb", "256")
    failed = {line[:WIDTH].strip() for line in result.stdout.splitlines() if " FAILED " in line}
    assert "backend gvisor" in result.stdout and failed <= {"fork server out of reach"}, result.stdout
    assert "results unforgeable" in result.stdout and result.returncode == (1 if failed else 0)
    items = [{"id": f"g{i}", "code": f"def f(x):\n    return [x * {i}, str(x)]", "input": str(i)} for i in range(5)]
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(i) + "\n" for i in items))
    collected = _opencwm("trace", "collect", str(source), "--out", str(tmp_path / "ds"), "--sandbox", "gvisor",
                         "--workers", "1", "--quiet")
    assert collected.returncode == 0, collected.stderr
    values = {row["id"]: trace.return_value for row, trace in read_traces(tmp_path / "ds")}
    assert values == {f"g{i}": repr([i * i, str(i)]) for i in range(5)}
    assert not list(Path("/tmp").glob(f"opencwm-gvisor-{os.getpid()}-*"))

"""``opencwm sandbox check``: hostile probes of every guarantee the sandbox gives, run in a real sandbox on this
machine, with a verdict per probe. A probe is *held* only when the attack failed in the way the guarantee says
(the right status, the host untouched, the next job unaffected); anything else is a failure, and the command exits
1. A sandbox with a layer turned off (``--without LAYER``) shows what that layer holds.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from opencwm.sandbox import workspace
from opencwm.sandbox.client import Outcome, Sandbox, SandboxConfig
from opencwm.sandbox.server import DISK, EXCEPTION, KILLED, MEMORY, TIMEOUT

EVALUATE = "opencwm.sandbox.probe:evaluate"
ECHO = "opencwm.sandbox.probe:echo"


@dataclass
class Verdict:
    guarantee: str
    probe: str
    held: bool
    status: str
    detail: str = ""


@dataclass
class Probe:
    guarantee: str
    name: str
    code: str  # run by probe.evaluate: what it leaves in ``result`` comes back
    held: Callable[[Outcome], bool]
    timeout: float | None = None


def _status_lines(names: tuple[str, ...]) -> str:
    """Job code: the fields of /proc/self/status among ``names`` that this kernel shows (gVisor shows fewer)."""
    return (f"fields = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
            f"result = {{k: fields[k].strip() for k in {list(names)!r} if k in fields}}\n")


CAPABILITY_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def _nothing_arrived(sock: socket.socket) -> bool:
    """Whether a host listener got no connection (TCP) or datagram (UDP) so far."""
    sock.setblocking(False)
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.accept()[0].close()
        else:
            sock.recv(64)
    except (BlockingIOError, InterruptedError):
        return True
    return False


def probes(host_dir: Path, victim: Path, listeners: dict[str, socket.socket], config: SandboxConfig,
           work: Path) -> list[Probe]:
    """The hostile jobs, against a host directory the sandbox shows read-only (``host_dir`` holding ``victim``),
    a host directory it may write (``work``, made by ``workspace.create`` as a forager work tree is) and host
    listeners on loopback (``tcp``, ``udp``, ``tcp6``): the sandbox's own loopback may answer inside, so what
    counts is that nothing reached the host's."""
    marker = host_dir / f"escaped-{uuid.uuid4().hex[:8]}"
    big = config.disk_mb * 2
    part = -(-config.disk_mb * 3 // 5)  # three of them: past the limit, each under the per-file limit
    # together well past the job's budget (its memory and its files in tmpfs), each under the per-process limit
    budget = config.memory_mb + config.disk_mb + min(config.disk_mb, 64)
    share = max(32, config.memory_mb * 3 // 4)
    children = -(-budget * 3 // (2 * share)) + 1

    def intact(_outcome: Outcome) -> bool:
        return victim.read_text() == "host data" and not marker.exists()

    def unreached(name: str) -> Callable[[Outcome], bool]:
        return lambda _outcome: _nothing_arrived(listeners[name])

    network = [Probe("no network", "TCP to a host loopback listener",
                     f"import socket\nsocket.create_connection(('127.0.0.1', {listeners['tcp'].getsockname()[1]}),"
                     " timeout=2)", unreached("tcp")),
               Probe("no network", "UDP to a host loopback port",
                     f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                     f"s.sendto(b'x', ('127.0.0.1', {listeners['udp'].getsockname()[1]}))", unreached("udp")),
               Probe("no network", "DNS lookup", "import socket\nresult = socket.getaddrinfo('pypi.org', 443)",
                     lambda o: o.status == EXCEPTION)]
    if "tcp6" in listeners:
        network.append(Probe("no network", "TCP to a host IPv6 loopback listener",
                             f"import socket\nsocket.create_connection(('::1', {listeners['tcp6'].getsockname()[1]}),"
                             " timeout=2)", unreached("tcp6")))
    shown = _shown(config)
    return [
        Probe("no capabilities", "capability sets of a job", _status_lines(CAPABILITY_FIELDS),
              lambda o: o.ok and {"CapEff", "CapPrm", "CapBnd"} <= set(o.result)
              and all(int(v, 16) == 0 for v in o.result.values())),
        Probe("no capabilities", "no_new_privs", LIBC + "result = libc.prctl(39, 0, 0, 0, 0)",  # PR_GET_NO_NEW_PRIVS
              lambda o: o.ok and o.result == 1),
        Probe("seccomp filter", "filter loaded", _status_lines(("Seccomp",)),
              lambda o: o.ok and o.result["Seccomp"] == "2"),
        Probe("seccomp filter", "unshare(CLONE_NEWUSER)",
              LIBC + "result = (libc.unshare(0x10000000), ctypes.get_errno())",
              lambda o: o.ok and o.result == [-1, 1]),
        Probe("seccomp filter", "ptrace(ATTACH) of the fork server",
              LIBC + "result = (libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())",
              lambda o: o.ok and o.result[0] == -1),
        Probe("read-only host", "remount / read-write, then write a host file",
              LIBC + "libc.mount(None, b'/', None, 0x20 | 0x1000, None)\n"
              "libc.umount2(b'/tmp', 2)\n"
              f"open({str(marker)!r}, 'w').write('pwned')", lambda o: o.status == EXCEPTION and intact(o)),
        Probe("read-only host", "overwrite a file the job was shown", f"open({str(victim)!r}, 'w').write('pwned')",
              lambda o: o.status == EXCEPTION and intact(o)),
        Probe("read-only host", "kernel settings (/proc/sys)",
              "import os\nos.close(os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY))",
              lambda o: o.status == EXCEPTION),
        Probe("host secrets hidden", "read /etc/shadow", "open('/etc/shadow', 'rb').read()",
              lambda o: o.status == EXCEPTION),
        Probe("host secrets hidden", "list /root and /home",
              "import os\nresult = [os.path.join(d, e) for d in ('/root', '/home') if os.path.isdir(d) "
              "for e in os.listdir(d)]",
              lambda o: o.ok and all(any(s == p or s.startswith(p + "/") for s in shown) for p in o.result)),
        *network,
        Probe("time limit", "endless loop", "while True:\n    pass", lambda o: o.status == TIMEOUT, timeout=1.0),
        Probe("memory limit", f"{children} processes of {share} MB each (limit {budget} MB in all)",
              f"import os, time\nkids = []\nfor _ in range({children}):\n    pid = os.fork()\n    if pid == 0:\n"
              f"        block = bytearray({share} * 1024 * 1024)\n"
              f"        for i in range(0, len(block), 4096):\n            block[i] = 1\n"
              f"        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
              f"for pid in kids:\n    os.waitpid(pid, 0)", lambda o: o.status == MEMORY, timeout=30.0),
        Probe("memory limit", "10 GB in one allocation", "bytearray(10 * 1024**3)", lambda o: o.status == MEMORY),
        Probe("disk limit", f"a {big} MB file (limit {config.disk_mb} MB)",
              f"with open('big', 'wb') as f:\n    for _ in range({big}):\n        f.write(bytes(1024 * 1024))",
              lambda o: o.status == DISK, timeout=60.0),
        Probe("disk limit", f"{config.disk_inodes * 2} files (limit {config.disk_inodes})",
              f"import os\nos.makedirs('many', exist_ok=True)\nfor i in range({config.disk_inodes * 2}):\n"
              f"    open(f'many/{{i}}', 'w').close()", lambda o: o.status == DISK, timeout=60.0),
        Probe("work tree limit", f"3 files of {part} MB in a host work tree (limit {config.disk_mb} MB)",
              f"for n in range(3):\n    with open({str(work)!r} + f'/big{{n}}', 'wb') as f:\n"
              f"        for _ in range({part}):\n            f.write(bytes(1024 * 1024))",
              lambda o: o.status == DISK and workspace.limited(work), timeout=60.0),
        Probe("work tree limit", f"{config.disk_inodes * 2} files in a host work tree",
              f"import os\nfor i in range({config.disk_inodes * 2}):\n    open({str(work)!r} + f'/{{i}}', 'w').close()",
              lambda o: o.status == DISK and workspace.limited(work), timeout=60.0),
    ]


def _shown(config: SandboxConfig) -> list[str]:
    """Host paths the sandbox shows on purpose (the interpreter, the package, the caller's visible paths)."""
    from opencwm.sandbox.isolation import Layout

    return Layout(python=config.python, visible=tuple(config.visible_paths)).read_only_binds()


def _server_reach(box: Sandbox) -> Verdict:
    """Whether a job can open the fork server's descriptors or its memory (a non-dumpable server: it cannot)."""
    code = ("import os\nppid = os.getppid()\nresult = []\n"
            "for path, flags in [*((f'/proc/{ppid}/fd/{n}', os.O_WRONLY) for n in range(64)),\n"
            "                    (f'/proc/{ppid}/mem', os.O_RDWR), (f'/proc/{ppid}/environ', os.O_RDONLY)]:\n"
            "    try:\n        os.close(os.open(path, flags))\n        result.append(path.rsplit('/', 2)[-2:])\n"
            "    except OSError:\n        pass")
    outcome = box.run(EVALUATE, code=code)
    held = outcome.ok and outcome.result == []
    detail = f"opened {outcome.result}" if outcome.ok and outcome.result else (outcome.error or "")
    return Verdict("fork server out of reach", "open the fork server's descriptors and memory", held,
                   outcome.status, detail)


def _forgery(box: Sandbox) -> Verdict:
    """A job writes forged replies, for itself and for the jobs after it, into every descriptor it can reach; the
    next jobs must get their own, real results (reply ids are random: a job cannot name the next request)."""
    code = ("import json, os\nppid = os.getppid()\n"
            "lines = ''.join(json.dumps({'id': i, 'status': 'ok', 'result': 'FORGED'}) + '\\n' for i in range(64))\n"
            "for fd in [*range(64), *(f'/proc/{ppid}/fd/{n}' for n in range(64))]:\n    try:\n"
            "        os.write(fd if isinstance(fd, int) else os.open(fd, os.O_WRONLY), lines.encode())\n"
            "    except OSError:\n        pass\nresult = 'done'")
    outcome = box.run(EVALUATE, code=code)
    nonce = uuid.uuid4().hex
    after = [box.run(ECHO, value=f"{nonce}-{i}") for i in range(3)]
    real = all(o.ok and o.result == f"{nonce}-{i}" for i, o in enumerate(after))
    forged = outcome.ok and outcome.result == "FORGED"
    detail = "the next jobs got their own results" if real else f"next jobs: {[o.result for o in after]}"
    return Verdict("results unforgeable", "forged replies for itself and the next jobs", real and not forged,
                   outcome.status, detail)


def _cross_job(box: Sandbox) -> Verdict:
    """One job leaves files in its working directory, HOME, /tmp and /dev/shm; the next must see none."""
    write = ("import os\nfor d in ('.', os.environ['HOME'], '/tmp', '/dev/shm'):\n    try:\n"
             "        open(os.path.join(d, 'left-behind'), 'w').write('x')\n    except OSError:\n        pass")
    look = ("import os\nresult = [d for d in ('.', os.environ['HOME'], '/tmp', '/dev/shm') "
            "if os.path.exists(os.path.join(d, 'left-behind'))]")
    box.run(EVALUATE, code=write)
    outcome = box.run(EVALUATE, code=look)
    held = outcome.ok and outcome.result == []
    return Verdict("fresh state per job", "files left in cwd, HOME, /tmp, /dev/shm by the previous job", held,
                   outcome.status, f"seen: {outcome.result}" if outcome.ok and outcome.result else "")


def _server_killed(box: Sandbox) -> Verdict:
    outcome = box.run(EVALUATE, code="import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                      "time.sleep(10)", timeout=2.0)
    after = box.run(ECHO, value="alive")
    held = outcome.status in (KILLED, TIMEOUT) and after.ok and after.result == "alive"
    return Verdict("survives its jobs", "a job kills the fork server", held, outcome.status,
                   "the next job ran" if held else (after.error or ""))


def _listeners() -> dict[str, socket.socket]:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    listeners = {"tcp": tcp, "udp": udp}
    try:
        tcp6 = socket.socket(socket.AF_INET6)
        tcp6.bind(("::1", 0))
        tcp6.listen(1)
        listeners["tcp6"] = tcp6
    except OSError:
        pass
    return listeners


def run_checks(config: SandboxConfig, report: Callable[[Verdict], None] | None = None) -> tuple[str, list[Verdict]]:
    """(backend, verdicts) of every probe against a sandbox made from ``config``."""
    listeners = _listeners()
    verdicts: list[Verdict] = []

    def record(verdict: Verdict) -> None:
        verdicts.append(verdict)
        if report:
            report(verdict)

    home = Path(os.environ.get("HOME", tempfile.gettempdir()))
    try:
        with tempfile.TemporaryDirectory(dir=home if home.is_dir() else None) as host_dir:
            victim = Path(host_dir) / "victim.txt"
            victim.write_text("host data")
            work = Path(host_dir) / "work"
            workspace.create(work)
            workspace.fit(work, bytes=config.disk_mb << 20, inodes=config.disk_inodes)
            config = replace(config, visible_paths=(*config.visible_paths, host_dir),
                             writable_paths=(*config.writable_paths, str(work)),
                             preload=(*config.preload, "opencwm.sandbox.probe"))
            try:
                with Sandbox(config) as box:
                    for probe in probes(Path(host_dir), victim, listeners, config, work):
                        outcome = box.run(EVALUATE, code=probe.code, timeout=probe.timeout)
                        try:
                            held = bool(probe.held(outcome))
                        except (TypeError, KeyError, ValueError, AttributeError):
                            held = False
                        record(Verdict(probe.guarantee, probe.name, held, outcome.status, _detail(outcome, held)))
                        victim.write_text("host data")
                        _empty(work)
                    for special in (_cross_job, _server_reach, _forgery, _server_killed):
                        record(special(box))
                    backend = box.backend
            finally:
                workspace.remove(work)
    finally:
        for sock in listeners.values():
            sock.close()
    return backend, verdicts


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _detail(outcome: Outcome, held: bool) -> str:
    if outcome.error:
        return outcome.error.splitlines()[0][:90]
    if outcome.ok and not held:
        return f"the job got through: {str(outcome.result)[:80]}"
    return ""


WIDTH = 25  # of the guarantee column


def format_header() -> str:
    return f"{'guarantee':<{WIDTH}} {'probe':<58} {'verdict':<7} {'status':<10} detail"


def format_verdict(verdict: Verdict) -> str:
    mark = "held" if verdict.held else "FAILED"
    return f"{verdict.guarantee:<{WIDTH}} {verdict.probe[:58]:<58} {mark:<7} {verdict.status:<10} {verdict.detail}"


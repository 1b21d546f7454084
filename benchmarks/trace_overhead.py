"""Tracing overhead and sandboxed collection throughput, side by side with peers, in one run.

Part 1 -- overhead on a fixed suite (CruxEval's 800 calls when the file is available, plus CPU-heavy functions):
wall time of every call untraced, under a no-op ``sys.settrace`` callback (the floor any settrace tracer pays),
under opencwm's tracer (native and settrace backends; monitoring too on 3.12+, through a second interpreter), and
under PySnooper and hunter recording lines and locals. Each mode runs the suite ``--repeats`` times; medians are
reported, and overheads as ratios to the untraced time.

Part 2 -- sandboxed collection throughput (items/s on this machine, a fresh process per item) of
``opencwm trace collect`` on the same CruxEval items, against the naive way: one fresh interpreter per item; and
with every defence layer of the sandbox against none of them (capabilities kept, no seccomp filter, the host shown
read-only, no memory cgroup, no tmpfs, a dumpable server: what the sandbox was before those layers).

Part 3 -- the sandbox's own cost: the round trip of a job that returns its argument, with every layer and with
none, interleaved, on each namespaced backend that works here (median of ``--jobs`` per configuration), and the
start of a sandbox; gVisor beside them (every layer, a tenth of the jobs).

    python benchmarks/trace_overhead.py [--cruxeval PATH] [--repeats 5] [--jobs 300] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import append_row  # noqa: E402

from opencwm.trace.source_map import SourceMap  # noqa: E402
from opencwm.trace.tracer import Limits, native_available, trace_call  # noqa: E402

DEFAULT_CRUXEVAL = REPO.parent / "shared" / "data" / "cruxeval.jsonl"
FILENAME = "<bench>"

CPU_HEAVY = [
    ("def f(n):\n    sieve = [True] * n\n    primes = []\n    for i in range(2, n):\n        if sieve[i]:\n"
     "            primes.append(i)\n            for j in range(i * i, n, i):\n                sieve[j] = False\n"
     "    return len(primes)", "f(3000)"),
    ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\ndef f(n):\n    return fib(n)", "f(15)"),
    ("def f(n):\n    s = ''\n    for i in range(n):\n        s += str(i % 10)\n    return len(s)", "f(2000)"),
    ("def f(xs):\n    xs = list(xs)\n    for i in range(len(xs)):\n        for j in range(len(xs) - 1 - i):\n"
     "            if xs[j] > xs[j + 1]:\n                xs[j], xs[j + 1] = xs[j + 1], xs[j]\n    return xs[:3]",
     "f(list(range(60, 0, -1)))"),
]


def load_suite(cruxeval: Path | None) -> list[tuple[str, str]]:
    suite = []
    if cruxeval and cruxeval.exists():
        for line in cruxeval.read_text().splitlines():
            item = json.loads(line)
            suite.append((item["code"], f"f({item['input']})"))
    return suite + CPU_HEAVY


def prepare(suite):
    """Compile every program once; return (function, argument thunk, source) triples."""
    prepared = []
    for source, call in suite:
        namespace: dict = {"__name__": "__main__"}
        exec(compile(source, FILENAME, "exec"), namespace)
        name, _, args = call.partition("(")
        arg_code = compile(f"(lambda *a: a)({args}", "<args>", "eval")
        prepared.append((namespace[name], lambda c=arg_code, ns=namespace: eval(c, ns), source))
    return prepared


class _Null(io.TextIOBase):
    def write(self, s):
        return len(s)


def _time_suite(prepared, wrap) -> float:
    total = 0.0
    for func, make_args, source in prepared:
        args = make_args()
        runner = wrap(func, source)
        start = time.perf_counter()
        try:
            runner(*args)
        except Exception:
            pass
        total += time.perf_counter() - start
    return total


def mode_untraced(func, source):
    return func


def mode_noop_settrace(func, source):
    def noop(frame, event, arg):
        return noop

    def run(*args):
        sys.settrace(noop)
        try:
            return func(*args)
        finally:
            sys.settrace(None)

    return run


_MAPS: dict[str, SourceMap] = {}


def mode_opencwm(backend: str, analysed: bool = False):
    """opencwm's tracer; ``analysed``: the per-program static analysis (one ast.parse, like the compile step that
    no mode is timed for) is done before timing, so only execution is measured."""

    def wrap(func, source):
        source_map = (_MAPS.get(source) or _MAPS.setdefault(source, SourceMap(source))) if analysed else None
        return lambda *args: trace_call(func, args, source=source, filename=FILENAME, backend=backend,
                                        source_map=source_map, limits=Limits(max_frames=10**7, max_bytes=10**9))

    return wrap


def mode_pysnooper(func, source):
    import pysnooper

    return pysnooper.snoop(output=_Null(), depth=50, color=False)(func)


def mode_hunter(func, source):
    import hunter

    def run(*args):
        with hunter.trace(hunter.Q(filename=FILENAME), actions=[hunter.VarsSnooper(stream=_Null())]):
            return func(*args)

    return run


def measure(prepared, modes: dict, repeats: int) -> dict[str, float]:
    times = {name: [] for name in modes}
    for _ in range(repeats):  # interleave modes so that machine noise hits all of them alike
        for name, wrap in modes.items():
            times[name].append(_time_suite(prepared, wrap))
    return {name: statistics.median(values) for name, values in times.items()}


def overhead_table(prepared, repeats: int) -> dict[str, float]:
    modes = {"untraced": mode_untraced, "noop_settrace": mode_noop_settrace}
    if native_available():
        modes["opencwm_native"] = mode_opencwm("native")
        modes["opencwm_native_analysed"] = mode_opencwm("native", True)
    else:
        print("(the native tracer is not built: make native)", file=sys.stderr)
    modes["opencwm_settrace"] = mode_opencwm("settrace")
    modes["opencwm_settrace_analysed"] = mode_opencwm("settrace", True)
    if sys.version_info >= (3, 12):
        modes["opencwm_monitoring"] = mode_opencwm("monitoring")
        modes["opencwm_monitoring_analysed"] = mode_opencwm("monitoring", True)
    for name, wrap in (("pysnooper", mode_pysnooper), ("hunter", mode_hunter)):
        try:
            __import__(name)
            modes[name] = wrap
        except ImportError:
            print(f"({name} not installed: pip install 'opencwm[bench]')", file=sys.stderr)
    return measure(prepared, modes, repeats)


def other_interpreter(version: str) -> str | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(root.glob(f"{version}.*"), reverse=True):
        if (candidate / "bin" / f"python{version}").exists():
            return str(candidate / "bin" / f"python{version}")
    return None


def collection_throughput(cruxeval: Path, workers: int) -> dict:
    from dataclasses import replace

    from opencwm.trace.collect import CollectConfig, collect

    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(workers=workers, progress=False)
        bare = replace(config, sandbox=replace(config.sandbox, layers=()))
        rates: dict[str, list[float]] = {"layers": [], "no_layers": []}
        for round_ in range(3):  # interleaved: the machine's noise is larger than the difference
            for name, chosen in (("layers", config), ("no_layers", bare)):
                summary = collect(cruxeval, Path(tmp) / f"{name}-{round_}", chosen)
                rates[name].append(summary["items_per_second"])
        items = [json.loads(line) for line in cruxeval.read_text().splitlines()][:40]
        # The naive reference: a fresh interpreter per item (no sandbox at all), on a sample.
        start = time.perf_counter()
        for item in items:
            code = (f"from opencwm.trace.program import trace_program\n"
                    f"trace_program({item['code']!r}, {'f(' + item['input'] + ')'!r})")
            subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        naive = len(items) / (time.perf_counter() - start)
    return {"items": summary["processed"], "sandboxed_items_per_s": statistics.median(rates["layers"]),
            "without_layers_items_per_s": statistics.median(rates["no_layers"]), "statuses": summary["statuses"],
            "naive_fresh_interpreter_items_per_s": round(naive, 1)}


def job_overhead(jobs: int) -> dict[str, dict[str, float]]:
    """Per backend: median round trip (ms) of an echo job with every layer and with none (interleaved in rounds),
    and the median start of a sandbox (s). gVisor with every layer only (its start and forks dominate)."""
    from opencwm.sandbox import LAYERS, Sandbox, SandboxConfig, SandboxUnavailable, detect_backend

    results = {}
    for backend in ("bwrap", "unshare", "gvisor"):
        try:
            detect_backend(backend)
        except SandboxUnavailable:
            continue
        variants = (("layers", LAYERS),) if backend == "gvisor" else (("layers", LAYERS), ("no_layers", ()))
        starts = []
        for _ in range(3):
            start = time.perf_counter()
            with Sandbox(SandboxConfig(backend=backend)) as box:
                box.run("opencwm.sandbox.probe:echo", value=0)
            starts.append(time.perf_counter() - start)
        boxes = {name: Sandbox(SandboxConfig(backend=backend, layers=layers, preload=("opencwm.sandbox.probe",)))
                 for name, layers in variants}
        times: dict[str, list[float]] = {name: [] for name in boxes}
        rounds = jobs // 20 if backend != "gvisor" else max(1, jobs // 200)
        try:
            for box in boxes.values():
                box.run("opencwm.sandbox.probe:echo", value=0)
            for round_ in range(rounds):
                for name, box in boxes.items():
                    for i in range(20):
                        start = time.perf_counter()
                        box.run("opencwm.sandbox.probe:echo", value=round_ * 20 + i)
                        times[name].append(time.perf_counter() - start)
        finally:
            for box in boxes.values():
                box.close()
        results[backend] = {name: statistics.median(values) * 1000 for name, values in times.items()}
        results[backend]["start_s"] = statistics.median(starts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cruxeval", type=Path, default=DEFAULT_CRUXEVAL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--jobs", type=int, default=300, help="sandbox jobs per configuration in part 3")
    parser.add_argument("--json", action="store_true", help="print only the overhead medians as JSON (internal)")
    parser.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    os.environ.setdefault("PYTHONHASHSEED", "0")
    suite = load_suite(args.cruxeval)
    prepared = prepare(suite)
    medians = overhead_table(prepared, args.repeats)
    if args.json:
        print(json.dumps(medians))
        return
    base = medians["untraced"]
    ratios = {name: value / base for name, value in medians.items()}
    print(f"suite: {len(suite)} calls ({'with' if len(suite) > len(CPU_HEAVY) else 'without'} CruxEval), "
          f"{args.repeats} repeats, medians")
    for name, value in medians.items():
        print(f"  {name:<20} {value * 1000:9.1f} ms   {ratios[name]:7.2f}x untraced")
    extra = {}
    exe = other_interpreter("3.12")
    if exe:
        out = subprocess.run([exe, __file__, "--json", "--repeats", str(args.repeats), "--cruxeval",
                              str(args.cruxeval)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode == 0:
            m312 = json.loads(out.stdout)
            extra = {k: m312[k] / m312["untraced"] for k in m312}
            print("  on CPython 3.12: " + ", ".join(f"{k} {v:.2f}x" for k, v in extra.items()))
    goals = {}
    for mode in [m for m in ratios if m.startswith("opencwm_")]:
        if "pysnooper" in ratios:
            goals[f"{mode}: overhead below PySnooper's (goal >= 10x)"] = (ratios["pysnooper"] - 1) / (ratios[mode] - 1)
        goals[f"{mode}: time over the no-op floor (goal <= 5x)"] = ratios[mode] / ratios["noop_settrace"]
    for name, value in goals.items():
        print(f"  {name}: {value:.2f}x")

    throughput = None
    if args.cruxeval.exists():
        throughput = collection_throughput(args.cruxeval, args.workers)
        print(f"sandboxed collection (median of 3, interleaved): {throughput['sandboxed_items_per_s']} items/s "
              f"({throughput['items']} items, {args.workers} workers, statuses {throughput['statuses']}); "
              f"without the defence layers: {throughput['without_layers_items_per_s']} items/s; "
              f"fresh interpreter per item: {throughput['naive_fresh_interpreter_items_per_s']} items/s")
    overhead = job_overhead(args.jobs)
    for backend, medians in overhead.items():
        print(f"sandbox ({backend}): start {medians['start_s']:.2f} s; job round trip with every layer "
              f"{medians['layers']:.2f} ms" + (f", with none {medians['no_layers']:.2f} ms" if "no_layers" in medians
                                               else ""))

    if not args.no_write:
        figures = "; ".join([
            f"{len(suite)} calls, median of {args.repeats}, time vs untraced: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
            *([("CPython 3.12: " + ", ".join(f"{k} {v:.2f}x" for k, v in extra.items()))] if extra else []),
            ", ".join(f"{k}: {v:.2f}x" for k, v in goals.items()),
            *([f"sandboxed collection {throughput['sandboxed_items_per_s']} items/s ({args.workers} workers, "
               f"fresh process per item; {throughput['without_layers_items_per_s']} items/s without the defence "
               f"layers) vs {throughput['naive_fresh_interpreter_items_per_s']} items/s with a "
               f"fresh interpreter per item"] if throughput else []),
            *[f"sandbox {backend}: start {m['start_s']:.2f} s, job round trip every layer {m['layers']:.2f} ms"
              + (f" vs none {m['no_layers']:.2f} ms" if "no_layers" in m else "") for backend, m in overhead.items()],
        ])
        append_row("trace_overhead", "python benchmarks/trace_overhead.py", figures)


if __name__ == "__main__":
    main()

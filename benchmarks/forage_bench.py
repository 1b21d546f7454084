"""Forager throughput: validated mutate-fix tasks per hour, and validation with coverage-selected tests against
the whole test suite on the same mutations (time ratio and whether the verdicts agree), in three modes of
``opencwm forage mutate --confirm``: ``order-dependent`` (the default: statements never executed rejected without a
run, then the covering tests' word unless the statement is order-dependent, when the whole suite decides),
``never`` (the covering tests' word) and ``always`` (the whole suite decides whenever every covering test
passes); the reference runs the whole suite on every mutation.

    python benchmarks/forage_bench.py [--packages six==1.16.0 toolz==1.0.0 inflection==0.5.1] [--per-package 30]

Environments are built (or reused) from PyPI under --cache; building is not timed. For each package the same
candidates are validated four times in the same run (each mode, whole suite), with --workers parallel work trees
each. All use the production path: one warm test server per work tree (``opencwm.forage.warm_runner``), so the
ratio measures test selection, not start-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.forage.build import build_environment
from opencwm.forage.environment import CONFIRM, Environment
from opencwm.forage.tasks import candidates, validate
from opencwm.forage.warm_runner import WarmRunner

DEFAULT_PACKAGES = ("six==1.16.0", "toolz==1.0.0", "inflection==0.5.1")


COMPARED = CONFIRM  # the production default first
MODES = {  # name -> (run the whole suite, validate's options)
    **{mode: (False, {"confirm": mode}) for mode in COMPARED},
    "full": (True, {"prescreen": False}),  # the reference: the whole suite on every mutation
}


def _validate_all(env: Environment, chosen, workers: int, mode: str) -> tuple[float, list[dict]]:
    full_suite, options = MODES[mode]
    trees = [env.checkout(parent=env.path / "work") for _ in range(workers)]
    servers = [WarmRunner(env, tree) for tree in trees]
    try:
        def work(index):
            mutation, tests = chosen[index]
            return validate(env, trees[index % workers], mutation, None if full_suite else tests,
                            server=servers[index % workers], **options)

        start = time.monotonic()
        rows = []
        with ThreadPoolExecutor(workers) as pool:  # one tree per worker: items i, i+w, i+2w... share a tree
            for offset in range(0, len(chosen), workers):
                rows += list(pool.map(work, range(offset, min(offset + workers, len(chosen)))))
        return time.monotonic() - start, rows
    finally:
        for server, tree in zip(servers, trees):
            server.close()
            Environment.discard(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--per-package", type=int, default=30, help="candidates per package")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "opencwm-forage-bench-envs"))
    parser.add_argument("--no-record", action="store_true", help="do not append a row to RESULTS.md")
    args = parser.parse_args()

    parts = []
    seconds = dict.fromkeys(MODES, 0.0)
    agree = {mode: 0 for mode in MODES}
    ratios = {mode: [] for mode in MODES}
    total_validated = total_candidates = 0
    for spec in args.packages:
        env = build_environment(spec, args.cache)
        if not env.ok:
            print(f"{spec}: build failed: {env.info.get('error')}", file=sys.stderr)
            parts.append(f"{spec}: build failed")
            continue
        chosen = candidates(env)[: args.per_package]
        runs = {mode: _validate_all(env, chosen, args.workers, mode) for mode in MODES}
        full_seconds, full = runs["full"]
        figures = []
        for mode in COMPARED:
            mode_seconds, rows = runs[mode]
            same = sum(a["validated"] == b["validated"] for a, b in zip(rows, full))
            agree[mode] += same
            seconds[mode] += mode_seconds
            ratios[mode] += [b["validation_seconds"] / max(a["validation_seconds"], 1e-3) for a, b in zip(rows, full)]
            figures.append(f"{mode} {mode_seconds:.1f} s = {full_seconds / mode_seconds:.1f}x, verdicts agree "
                           f"{same}/{len(chosen)}")
        seconds["full"] += full_seconds
        validated = sum(r["validated"] for r in runs["order-dependent"][1])
        total_validated += validated
        total_candidates += len(chosen)
        line = (f"{spec}: {len(env.info['tests'])} tests, {validated}/{len(chosen)} validated, "
                f"{validated / runs['order-dependent'][0] * 3600:.0f} tasks/h; full suite {full_seconds:.1f} s vs "
                + ", ".join(figures))
        print(line)
        parts.append(line)
    if not total_candidates:
        raise SystemExit("no environment built")
    summary = (f"{args.workers} workers; overall {total_validated}/{total_candidates} validated, "
               f"{total_validated / seconds['order-dependent'] * 3600:.0f} validated tasks/h (default mode); "
               "full suite / "
               + "; ".join(f"{mode}: {seconds['full'] / seconds[mode]:.1f}x total time, median per mutation "
                           f"{statistics.median(ratios[mode]):.1f}x, verdicts agree {agree[mode]}/{total_candidates}"
                           for mode in COMPARED)
               + " (goal >= 5x with the same verdicts)")
    print(summary)
    if not args.no_record:
        command = "python benchmarks/forage_bench.py " + " ".join(sys.argv[1:])
        append_row("forage_bench", command.strip(), "; ".join([*parts, summary]))


if __name__ == "__main__":
    main()

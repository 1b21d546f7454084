"""Forager throughput: validated mutate-fix tasks per hour, and validation with coverage-selected tests against
the whole test suite on the same mutations (time ratio and whether the verdicts agree). The selected mode is
production's: covering tests, statements never executed rejected without a run, and the whole suite deciding
when every covering test passes; the reference runs the whole suite on every mutation.

    python benchmarks/forage_bench.py [--packages six==1.16.0 toolz==1.0.0 inflection==0.5.1] [--per-package 30]

Environments are built (or reused) from PyPI under --cache; building is not timed. For each package the same
candidates are validated twice in the same run, once with the covering tests and once with the whole suite,
with --workers parallel work trees each. Both use the production path: one warm test server per work tree
(``opencwm.forage.test_server``), so the ratio measures test selection, not start-up.
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

from opencwm.forage.environment import Environment, build_environment
from opencwm.forage.tasks import candidates, validate
from opencwm.forage.test_server import TestServer

DEFAULT_PACKAGES = ("six==1.16.0", "toolz==1.0.0", "inflection==0.5.1")


def _validate_all(env: Environment, chosen, workers: int, full_suite: bool) -> tuple[float, list[dict]]:
    trees = [env.checkout(parent=env.path / "work") for _ in range(workers)]
    servers = [TestServer(env, tree) for tree in trees]
    try:
        def work(index):
            mutation, tests = chosen[index]
            return validate(env, trees[index % workers], mutation, None if full_suite else tests,
                            server=servers[index % workers], prescreen=not full_suite)

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

    parts, ratios = [], []
    total_validated = total_candidates = 0
    total_selected_seconds = total_full_seconds = 0.0
    agree = compared = 0
    for spec in args.packages:
        env = build_environment(spec, args.cache)
        if not env.ok:
            print(f"{spec}: build failed: {env.info.get('error')}", file=sys.stderr)
            parts.append(f"{spec}: build failed")
            continue
        chosen = candidates(env)[: args.per_package]
        selected_seconds, selected = _validate_all(env, chosen, args.workers, full_suite=False)
        full_seconds, full = _validate_all(env, chosen, args.workers, full_suite=True)
        validated = sum(r["validated"] for r in selected)
        same = sum(a["validated"] == b["validated"] for a, b in zip(selected, full))
        per_item = [b["validation_seconds"] / max(a["validation_seconds"], 1e-6) for a, b in zip(selected, full)]
        ratios += per_item
        agree, compared = agree + same, compared + len(chosen)
        total_validated += validated
        total_candidates += len(chosen)
        total_selected_seconds += selected_seconds
        total_full_seconds += full_seconds
        line = (f"{spec}: {len(env.info['tests'])} tests, {validated}/{len(chosen)} validated, "
                f"{validated / selected_seconds * 3600:.0f} tasks/h, selected {selected_seconds:.1f} s vs full suite "
                f"{full_seconds:.1f} s = {full_seconds / selected_seconds:.1f}x, verdicts agree {same}/{len(chosen)}")
        print(line)
        parts.append(line)
    if not total_candidates:
        raise SystemExit("no environment built")
    summary = (f"{args.workers} workers; overall {total_validated}/{total_candidates} validated, "
               f"{total_validated / total_selected_seconds * 3600:.0f} validated tasks/h with coverage-selected "
               f"tests; full suite / selected: {total_full_seconds / total_selected_seconds:.1f}x total time, "
               f"median per mutation {statistics.median(ratios):.1f}x (goal >= 5x); verdicts agree {agree}/{compared}")
    print(summary)
    if not args.no_record:
        command = "python benchmarks/forage_bench.py " + " ".join(sys.argv[1:])
        append_row("forage_bench", command.strip(), "; ".join([*parts, summary]))


if __name__ == "__main__":
    main()

"""The forager's Docker backend against the local sandbox, side by side in one run: environment build time (the
same pip installs; the baseline's two test runs in containers, and the image imported once), and the time of a
test run -- the whole suite, and one test -- as medians of repeated runs on the same work tree.

    python benchmarks/docker_bench.py [--package inflection==0.5.1] [--repeats 7]

Needs a Docker engine: the one that answers, else (as root, with Debian's docker.io) a dockerd started for the
benchmark and stopped after it; without one it says why and writes no row. Builds go to fresh caches (and the
environment's image is removed first), so both builds are timed from nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.forage import docker
from opencwm.forage.build import build_environment
from opencwm.forage.environment import Environment


def timed_runs(env: Environment, tree: Path, tests, backend: str, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.monotonic()
        run = env.run_tests(tree, tests, backend=backend)
        seconds.append(time.monotonic() - start)
        assert run.status == "ok" and run.outcomes, run.output[-500:]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", default="inflection==0.5.1", help="a PyPI sdist with its tests")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each kind (medians)")
    args = parser.parse_args()
    with docker.local_engine() as why:
        if why is not None:
            print(f"docker_bench: no Docker engine ({why}); no row written", file=sys.stderr)
            return 1
        with tempfile.TemporaryDirectory() as scratch:
            builds = {}
            for backend in ("auto", "docker"):
                start = time.monotonic()
                env = build_environment(args.package, Path(scratch) / backend, backend=backend)
                builds[backend] = (time.monotonic() - start, env)
                assert env.ok, env.info.get("error")
                if backend == "docker":
                    subprocess.run(["docker", "rmi", "-f", docker.image(env)], capture_output=True)
                    start = time.monotonic()
                    docker.image(env)
                    image_seconds = time.monotonic() - start
            local, contained = builds["auto"][1], builds["docker"][1]
            same = all(local.info[k] == contained.info[k] for k in ("tests", "flaky", "coverage"))
            tree = local.checkout(parent=Path(scratch) / "work")
            one = local.passing_tests()[:1]
            medians = {}
            for label, tests in (("suite", None), ("one test", one)):
                for backend in ("auto", "docker"):
                    medians[label, backend] = statistics.median(timed_runs(local, tree, tests, backend,
                                                                           args.repeats))
            Environment.discard(tree)
    figures = (f"{args.package} ({len(local.info['tests'])} tests): environment build {builds['auto'][0]:.1f} s local "
               f"vs {builds['docker'][0]:.1f} s Docker (image import {image_seconds:.1f} s; same baseline, coverage "
               f"and flaky set: {same}); test run, median of {args.repeats}: whole suite "
               f"{medians['suite', 'auto']:.2f} s local vs {medians['suite', 'docker']:.2f} s Docker "
               f"({medians['suite', 'docker'] / medians['suite', 'auto']:.1f}x), one test "
               f"{medians['one test', 'auto']:.2f} s vs {medians['one test', 'docker']:.2f} s "
               f"({medians['one test', 'docker'] / medians['one test', 'auto']:.1f}x)")
    print(figures)
    append_row("docker_bench", f"python benchmarks/docker_bench.py --package {args.package} --repeats {args.repeats}",
               figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

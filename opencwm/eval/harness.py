"""The one evaluation loop: any benchmark over any completer (a local checkpoint or an OpenAI-compatible server),
graded in the sandbox.

    benchmark = CruxEval(mode="output", style="direct", data="cruxeval.jsonl")
    summary = run_benchmark(benchmark, completer, Path("runs/eval/cruxeval-o"), model="runs/sft/model")

A run directory holds ``settings.json`` (every setting the run used), ``results.jsonl`` (one row per item: its
prompt, completions, extracted answers, verdicts with reasons, tokens and seconds) and ``summary.json`` (pass@k
with confidence intervals). Items are generated a chunk at a time (batched rows locally, concurrent requests to a
server) while the previous chunk is graded by a pool of sandboxes; each finished row is appended and flushed, so a
run that is killed loses at most the chunk in flight, and running the same command again goes on from there. A
completion the backend refuses becomes a row that says so; only a backend that cannot answer at all stops the run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.errors import UsageError, one_line
from opencwm.eval.passk import interval, mean, pass_at_k
from opencwm.infer.completer import Completer, RequestRefused
from opencwm.sandbox import EXCEPTION, Outcome, SandboxConfig
from opencwm.sandbox.pool import SandboxPool

SETTINGS, RESULTS, SUMMARY = "settings.json", "results.jsonl", "summary.json"
RESUMABLE = ("limit", "workers")  # settings a resumed run may change


@dataclass
class Problem:
    id: str
    prompt: str  # the text the model continues (special tokens allowed: a chat, a trace context)
    reference: dict = field(default_factory=dict)  # what the grader needs (and "text": the item's own text)
    unanswerable: str | None = None  # why the item fails without being asked (its call cannot start)


@dataclass
class Verdict:
    passed: bool
    reason: str = ""  # why it failed ("wrong answer", "timeout: ...", "no answer")


@dataclass
class Sampling:
    samples: int = 1  # completions per item (pass@k needs k of them)
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = 0


class Benchmark:
    """One benchmark: its items, how a completion ends and what answer it holds, and how the answer is graded.
    Subclasses set ``name`` and ``defaults`` (the published protocol: sampling, ks) and implement ``problems``,
    ``extract`` and ``grade``."""

    name = ""
    reported: dict[str, float] | None = None  # CWM's published figures (metric -> %), beside a run's in reports
    stop_tokens: tuple[str, ...] = ()  # special tokens that end a completion
    stop_texts: tuple[str, ...] = ()  # texts that end one (the completion is cut before the first)
    ks: tuple[int, ...] = (1,)
    grade_timeout: float = 3.0  # seconds per grading job in the sandbox
    sandbox_preload: tuple[str, ...] = ()  # modules the grading sandboxes import once

    def settings(self) -> dict:
        """What, besides sampling, decides this run's figures (written into ``settings.json``)."""
        return {"ks": list(self.ks), "grade_timeout": self.grade_timeout, "data": getattr(self, "data", None)}

    def problems(self) -> list[Problem]:
        raise NotImplementedError

    def extract(self, problem: Problem, text: str) -> str | None:
        """The answer a completion gives, or None when it gives none."""
        return text

    def grade(self, problem: Problem, answer: str) -> tuple[str, dict] | Verdict:
        """A sandbox job ``(fn, kwargs)`` whose outcome decides the answer, or a verdict without one."""
        raise NotImplementedError

    def job_timeout(self, problem: Problem) -> float:
        """Seconds the grading job of ``problem`` may run."""
        return self.grade_timeout

    def verdict(self, problem: Problem, answer: str, outcome: Outcome) -> Verdict:
        """The verdict of a grading job's outcome: it passed when it returned True; a failed assertion (a test
        that ran and disagreed) is a wrong answer, anything else fails with the sandbox's status and error."""
        if outcome.ok:
            return Verdict(outcome.result is True, "" if outcome.result is True else "wrong answer")
        if outcome.status == EXCEPTION and (outcome.error or "").startswith("AssertionError"):
            return Verdict(False, "wrong answer")
        return Verdict(False, one_line(f"{outcome.status}: {outcome.error or ''}", 300))


def cut(text: str, stops: Iterable[str]) -> str:
    """``text`` up to the first of ``stops``."""
    end = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            end = min(end, at)
    return text[:end]


def read_rows(path: Path) -> list[dict]:
    """The finished rows of a results file; a line a kill left half-written is dropped (and the file rewritten
    without it, so that new rows follow whole ones)."""
    if not path.exists():
        return []
    rows, broken = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if isinstance(row, dict) and "id" in row and "passed" in row:
                rows.append(row)
                continue
        except ValueError:
            pass
        broken = True
    if broken:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def check_settings(out: Path, settings: dict) -> None:
    """Records a run's settings in ``out``; a run already there with other settings is refused (one line)."""
    path = out / SETTINGS
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = {}
        changed = sorted(k for k in set(before) | set(settings)
                         if k not in RESUMABLE and before.get(k) != settings.get(k))
        if changed:
            raise UsageError(f"{out} holds a run with other settings ({', '.join(changed)}); give another --out "
                             "to start a new run, or the same settings to go on with this one")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


class _Chunk:
    """One chunk of items on its way through generation and grading."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.tokens: list[list[list[int]]] = []
        self.texts: list[list[str]] = []
        self.errors: list[str | None] = [None] * len(problems)
        self.seconds = 0.0
        self.grading: list[list[Future | Verdict]] = []
        self.answers: list[list[str | None]] = []


def _generate(benchmark: Benchmark, completer: Completer, chunk: _Chunk, sampling: Sampling, seed: int | None,
              room: int) -> None:
    tokenizer = completer.tokenizer
    stop = [tokenizer.token_id(name) for name in benchmark.stop_tokens]
    prompts = [tokenizer.encode(p.prompt, allow_special=True) for p in chunk.problems]
    request = dict(stop=stop, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                   top_p=sampling.top_p, n=sampling.samples, seed=seed, stop_texts=benchmark.stop_texts)
    start = time.monotonic()
    for i, problem in enumerate(chunk.problems):
        if problem.unanswerable:
            chunk.errors[i] = problem.unanswerable
    fits = [i for i, p in enumerate(prompts) if chunk.errors[i] is None and len(p) + 1 <= room]
    if fits:  # no request asks for more than the context leaves (a server refuses those)
        request["max_tokens"] = max(1, min(sampling.max_tokens, room + 1 - max(len(prompts[i]) for i in fits)))
    results: dict[int, list[list[int]]] = {}
    try:
        for i, tokens in zip(fits, completer.complete_batch([prompts[i] for i in fits], **request)):
            results[i] = tokens
    except (RequestRefused, ValueError):  # find which items are refused: one at a time
        for i in fits:
            try:
                results[i] = completer.complete(prompts[i], **request)
            except (RequestRefused, ValueError) as exc:
                chunk.errors[i] = one_line(f"refused: {exc}", 300)
    chunk.seconds = time.monotonic() - start
    stops = set(stop)
    for i, prompt in enumerate(prompts):
        if i not in results and chunk.errors[i] is None:
            chunk.errors[i] = f"the prompt ({len(prompt)} tokens) does not fit the model's context ({room})"
        tokens = results.get(i, [])
        chunk.tokens.append(tokens)
        chunk.texts.append([cut(tokenizer.decode([t for t in sample if t not in stops]), benchmark.stop_texts)
                            for sample in tokens])


def submit_grades(benchmark: Benchmark, pool: SandboxPool, problem: Problem, answers: list[str | None]
                  ) -> list[Future | Verdict]:
    """Each answer's grading: a verdict given without a run (no answer, a refused form) or the sandbox job that
    decides it, submitted to ``pool``."""
    jobs: list[Future | Verdict] = []
    for answer in answers:
        graded = Verdict(False, "no answer") if answer is None else benchmark.grade(problem, answer)
        if isinstance(graded, Verdict):
            jobs.append(graded)
        else:
            fn, kwargs = graded
            jobs.append(pool.submit(fn, timeout=benchmark.job_timeout(problem), **kwargs))
    return jobs


def collect_grades(benchmark: Benchmark, problem: Problem, answers: list[str | None],
                   jobs: list[Future | Verdict]) -> tuple[list[Verdict], float]:
    """The verdicts of ``submit_grades``'s jobs (waiting for them) and the seconds they ran."""
    verdicts, seconds = [], 0.0
    for answer, job in zip(answers + [None] * (len(jobs) - len(answers)), jobs):
        if isinstance(job, Verdict):
            verdicts.append(job)
        else:
            outcome = job.result()
            seconds += outcome.seconds
            verdicts.append(benchmark.verdict(problem, answer, outcome))
    return verdicts, seconds


def _submit(benchmark: Benchmark, pool: SandboxPool, chunk: _Chunk, samples: int) -> None:
    for problem, texts, error in zip(chunk.problems, chunk.texts, chunk.errors):
        answers = [benchmark.extract(problem, text) for text in texts]
        chunk.answers.append(answers)
        jobs = submit_grades(benchmark, pool, problem, answers)
        if error is not None:
            jobs = [Verdict(False, error)] * samples
        chunk.grading.append(jobs)


def _rows(benchmark: Benchmark, chunk: _Chunk) -> list[dict]:
    rows = []
    share = chunk.seconds / max(1, len(chunk.problems))
    for problem, tokens, texts, answers, jobs in zip(chunk.problems, chunk.tokens, chunk.texts, chunk.answers,
                                                     chunk.grading):
        verdicts, grade_seconds = collect_grades(benchmark, problem, answers, jobs)
        rows.append({"id": problem.id, "prompt": problem.prompt, "completions": texts, "answers": answers,
                     "passed": [v.passed for v in verdicts], "reasons": [v.reason for v in verdicts],
                     "tokens": [len(t) for t in tokens], "seconds": round(share, 4),
                     "grade_seconds": round(grade_seconds, 4)})
    return rows


def summarize(rows: list[dict], ks: Iterable[int], confidence: float = 0.95) -> dict:
    """pass@k (k up to the fewest samples an item has) with its interval over items, and what went wrong (each
    reason's kind: the text before its first ``:`` or ``(``)."""
    summary: dict = {"items": len(rows)}
    if not rows:
        return summary
    fewest = min(len(row["passed"]) for row in rows)
    for k in ks:
        if k <= fewest:
            values = [pass_at_k(len(row["passed"]), sum(row["passed"]), k) for row in rows]
            summary[f"pass@{k}"] = mean(values)
            summary[f"pass@{k}_interval"] = interval(values, confidence)
    summary["samples"] = fewest
    tokens = [t for row in rows for t in row["tokens"]]
    summary["mean_tokens"] = mean(tokens)
    summary["generate_seconds"] = round(sum(row["seconds"] for row in rows), 3)
    summary["grade_seconds"] = round(sum(row["grade_seconds"] for row in rows), 3)
    reasons = Counter(re.split(r"[:(]", reason)[0].strip() for row in rows for reason in row["reasons"] if reason)
    summary["failures"] = dict(reasons.most_common())
    return summary


def run_benchmark(benchmark: Benchmark, completer: Completer, out: Path, *, model: str, sampling: Sampling,
                  limit: int | None = None, workers: int = 2, chunk_size: int | None = None,
                  progress: bool = True, problems: list[Problem] | None = None) -> dict:
    """Evaluates ``completer`` on ``benchmark`` (its ``problems``, when the caller read them already) into
    ``out``, going on from the rows already there; the summary."""
    settings = {"benchmark": benchmark.name, "model": model, **vars(sampling), **benchmark.settings(),
                "limit": limit, "workers": workers}
    check_settings(out, settings)
    problems = (benchmark.problems() if problems is None else problems)[:limit]
    if len({p.id for p in problems}) != len(problems):
        raise UsageError(f"{benchmark.name}: the items' ids are not unique")
    results = out / RESULTS
    done = {row["id"] for row in read_rows(results)}
    todo = [p for p in problems if p.id not in done]
    size = chunk_size or max(1, getattr(completer, "batch_size", 0) or getattr(completer, "concurrency", 0) or 8)
    room = completer.context_length - 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="item", desc=benchmark.name,
                   file=sys.stderr, dynamic_ncols=True)
    config = SandboxConfig(timeout=benchmark.grade_timeout, preload=benchmark.sandbox_preload, memory_mb=1024)
    try:
        with SandboxPool(config, workers) as pool, open(results, "a", encoding="utf-8") as handle:
            pending: _Chunk | None = None

            def write(chunk: _Chunk) -> None:
                for row in _rows(benchmark, chunk):
                    handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                if bar is not None:
                    bar.update(len(chunk.problems))

            for start in range(0, len(todo), size):
                chunk = _Chunk(todo[start : start + size])
                seed = None if sampling.seed is None else sampling.seed + len(problems) - len(todo) + start
                _generate(benchmark, completer, chunk, sampling, seed, room)
                _submit(benchmark, pool, chunk, sampling.samples)  # graded while the next chunk is generated
                if pending is not None:
                    write(pending)
                pending = chunk
            if pending is not None:
                write(pending)
    finally:
        if bar is not None:
            bar.close()
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted((row for row in read_rows(results) if row["id"] in order), key=lambda row: order[row["id"]])
    summary = {"benchmark": benchmark.name, "model": model, **summarize(rows, benchmark.ks),
               "settings": settings, "reported": benchmark.reported or {}}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary

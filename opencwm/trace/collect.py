"""Trace collection at scale: work items from a source, run in sandboxes in parallel, written as Parquet shards.

Locally, ``workers`` threads each drive their own sandbox (a fork server, so every item still runs in a fresh
process); with ``ray_address`` the items go out in batches to Ray tasks, each of which runs its own sandbox on its
node. The driver alone writes shards (see ``opencwm.shards``): a rerun skips every finished item, and ``kill -9``
loses at most the items in flight and the rows not yet flushed to a shard.

Record schema (one row per trace; ``frames[].locals`` is the JSON text exactly as it appears in CWM's format):

    id, item, origin, call, entry, module, source, entry_lineno, status, error, n_frames, python, backend, seconds,
    frames: list<struct<event, lineno, line, locals, value>>
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from opencwm.sandbox import OK, Outcome, Sandbox, SandboxConfig
from opencwm.sandbox.pool import SandboxPool
from opencwm.shards import TRACES_KIND, ShardWriter, read_rows
from opencwm.trace.inputs import WorkItem, failed_trace, load_items
from opencwm.trace.jobs import PRELOAD
from opencwm.trace.record import ERROR, Frame, Trace
from opencwm.trace.tracer import Limits

KIND = TRACES_KIND
FRAME_TYPE = pa.struct([
    ("event", pa.string()), ("lineno", pa.int32()), ("line", pa.string()), ("locals", pa.string()),
    ("value", pa.string()),
])
SCHEMA = pa.schema([
    ("id", pa.string()), ("item", pa.string()), ("origin", pa.string()), ("call", pa.string()),
    ("entry", pa.string()), ("module", pa.string()), ("source", pa.string()), ("entry_lineno", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("n_frames", pa.int32()), ("python", pa.string()),
    ("backend", pa.string()), ("seconds", pa.float64()), ("frames", pa.list_(FRAME_TYPE)),
])


@dataclass
class CollectConfig:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    sandbox: SandboxConfig = field(default_factory=lambda: SandboxConfig(preload=PRELOAD))
    limits: Limits = field(default_factory=Limits)
    tracer_backend: str | None = None  # native | settrace | monitoring (default: the fastest the interpreter has)
    ray_address: str | None = None  # "local" starts a local Ray instance
    rows_per_shard: int = 2000
    seconds_per_shard: float = 30.0
    max_items: int | None = None  # stop after this many new items
    first_items: int | None = None  # only the source's first N items (a rerun completes the same selection)
    progress: bool = True


def trace_row(record_id: str, trace: dict, *, meta: dict) -> dict:
    frames = [
        {**f, "locals": None if f.get("locals") is None else json.dumps(f["locals"])} for f in trace["frames"]
    ]
    return {"id": record_id, "source": trace["source"], "entry_lineno": trace["entry_lineno"],
            "status": trace["status"], "error": trace.get("error"), "n_frames": len(frames), "frames": frames,
            **meta}


def row_to_trace(row: dict) -> Trace:
    frames = [
        Frame(f["event"], f["line"], f["lineno"], None if f["locals"] is None else json.loads(f["locals"]), f["value"])
        for f in row["frames"]
    ]
    return Trace(row["source"], row["entry_lineno"], frames, row["status"], row["error"])


def read_traces(directory: str | Path):
    """(row, Trace) for every trace of a collected dataset."""
    for row in read_rows(directory):
        yield row, row_to_trace(row)


def outcome_rows(item: WorkItem, outcome: Outcome, origin: str) -> list[dict]:
    """The rows one finished work item contributes. A job the sandbox had to stop still leaves a row saying so, and
    so does a result of the wrong shape (it came from untrusted code)."""
    try:
        return _outcome_rows(item, outcome, origin)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        return error_rows(item, outcome, origin, f"the job's result is malformed ({type(exc).__name__}: {exc})"[:300])


def _bad_rows(item: str, rows: list[dict], reason: str) -> list[dict]:
    """Rows of a value of the wrong type (from untrusted code): one error row that says so, with what of the
    item's own description fits the schema."""
    first = rows[0]
    row = {name: first.get(name) for name in SCHEMA.names}
    row.update(id=str(first.get("id") or item), status=ERROR, error=reason, frames=[], n_frames=0, entry_lineno=0)
    for column in SCHEMA:
        try:
            pa.array([row[column.name]], type=column.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            row[column.name] = None
    return [row]


def error_rows(item: WorkItem, outcome: Outcome, origin: str, reason: str) -> list[dict]:
    """The one row of an item that gave no usable trace: status ``error`` and the reason."""
    return _outcome_rows(item, Outcome(ERROR, error=reason, seconds=outcome.seconds), origin)


def _outcome_rows(item: WorkItem, outcome: Outcome, origin: str) -> list[dict]:
    meta = {"origin": origin, "call": item.meta.get("call"), "entry": None, "module": None, "python": None,
            "backend": None, "seconds": outcome.seconds}
    if outcome.status != OK:
        return [trace_row(item.key, failed_trace(item, outcome).to_dict(), meta=meta)]
    result = outcome.result
    meta.update(python=result["python"], backend=result["backend"])
    if "trace" in result:
        call = item.meta.get("call") or ""
        meta["entry"] = call.split("(", 1)[0] or None
        return [trace_row(item.key, result["trace"], meta=meta)]
    rows, counts = [], Counter()
    for harvested in result["traces"]:
        name = f"{harvested['module']}::{harvested['function']}"
        counts[name] += 1
        rows.append(trace_row(f"{item.key}::{name}#{counts[name]}", harvested["trace"],
                              meta={**meta, "entry": harvested["function"], "module": harvested["module"]}))
    return rows


def _run_local(items: list[WorkItem], config: CollectConfig, on_done) -> None:
    with SandboxPool(config.sandbox, config.workers) as pool:
        in_flight: dict = {}
        for item in items:
            in_flight[pool.submit(item.job, **item.kwargs)] = item
            if len(in_flight) >= 4 * config.workers:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(in_flight.pop(future), future.result())
        for future in list(in_flight):
            on_done(in_flight.pop(future), future.result())


def _ray_batch(items: list[dict], sandbox: dict) -> list[tuple[dict, dict]]:
    box = Sandbox(SandboxConfig(**sandbox))
    try:
        return [(item, asdict(box.run(item["job"], **item["kwargs"]))) for item in items]
    finally:
        box.close()


def _run_ray(items: list[WorkItem], config: CollectConfig, on_done, batch_size: int = 32) -> None:
    from opencwm.ray_cluster import connect

    ray = connect(config.ray_address, config.workers)
    task = ray.remote(num_cpus=1)(_ray_batch)
    sandbox = asdict(config.sandbox)
    by_key = {item.key: item for item in items}
    batches = [[asdict(i) for i in items[k : k + batch_size]] for k in range(0, len(items), batch_size)]
    window = max(2, 2 * int(ray.available_resources().get("CPU", config.workers)))
    in_flight = []
    for batch in batches:
        in_flight.append(task.remote(batch, sandbox))
        if len(in_flight) >= window:
            done, in_flight = ray.wait(in_flight, num_returns=1)
            for item, outcome in ray.get(done[0]):
                on_done(by_key[item["key"]], Outcome(**outcome))
    for ref in in_flight:
        for item, outcome in ray.get(ref):
            on_done(by_key[item["key"]], Outcome(**outcome))


def collect(source: str | Path, out: str | Path, config: CollectConfig | None = None,
            calls: list[str] | None = None) -> dict:
    """Collect traces of ``source`` into the dataset directory ``out``; returns a summary."""
    config = config or CollectConfig()
    if config.tracer_backend or config.limits != Limits():
        job_args = {"limits": asdict(config.limits)}
        if config.tracer_backend:
            job_args["backend"] = config.tracer_backend
    else:
        job_args = {}
    kind, items = load_items(source, calls)
    if config.first_items is not None:
        items = items[: config.first_items]
    origin = str(source)
    if kind == "repository":  # the jobs read the repository (bubblewrap shows no host path under /tmp by default)
        visible = (*config.sandbox.visible_paths, str(Path(source).resolve()))
        config = replace(config, sandbox=replace(config.sandbox, visible_paths=visible))
    writer = ShardWriter(out, SCHEMA, KIND, rows_per_shard=config.rows_per_shard,
                         seconds_per_shard=config.seconds_per_shard,
                         metadata={"source": origin, "source_kind": kind}, on_bad_rows=lambda *a: on_bad(*a))
    done = writer.finished_items()
    todo = [item for item in items if item.key not in done]
    if config.max_items is not None:
        todo = todo[: config.max_items]
    for item in todo:
        if item.job.endswith("trace_program_job"):
            item.kwargs.update(job_args)
        elif "limits" in job_args:
            item.kwargs["limits"] = job_args["limits"]
    statuses: Counter = Counter()
    rows_written = 0
    progress = None
    if config.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), unit="item", desc=f"tracing {Path(origin).name}", file=sys.stderr,
                        dynamic_ncols=True)

    def on_done(item: WorkItem, outcome: Outcome) -> None:
        nonlocal rows_written
        rows = outcome_rows(item, outcome, origin)
        writer.add(item.key, rows)
        for row in rows:
            statuses[row["status"]] += 1
        rows_written += len(rows)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(dict(statuses.most_common(4)), refresh=False)

    def on_bad(item: str, rows: list[dict], reason: str) -> list[dict]:
        for row in rows:
            statuses[row["status"]] -= 1
        statuses[ERROR] += 1
        return _bad_rows(item, rows, reason)

    start = time.monotonic()
    runnable, invalid = [], []
    for item in todo:
        if item.invalid:
            invalid.append(item.invalid)
            on_done(item, Outcome(ERROR, error=item.invalid))
        else:
            runnable.append(item)
    try:
        if config.ray_address:
            _run_ray(runnable, config, on_done)
        else:
            _run_local(runnable, config, on_done)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    seconds = time.monotonic() - start
    return {
        "out": str(out), "source_kind": kind, "items": len(items), "already_done": len(done & {i.key for i in items}),
        "processed": len(todo), "traces": rows_written, "statuses": dict(+statuses), "seconds": round(seconds, 3),
        "items_per_second": round(len(todo) / seconds, 1) if seconds > 0 and todo else None,
        "invalid_items": len(invalid), "first_invalid": invalid[0] if invalid else None,
    }

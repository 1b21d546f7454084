"""``opencwm trace``: trace one call, collect many into Parquet shards, look at a dataset.

    opencwm trace run FILE.py [--call "f(1, 2)"] [--format pretty|cwm|json]
    opencwm trace collect SOURCE --out DIR [--workers N] [--ray ADDRESS]
    opencwm trace show DIR [--limit N] [--id ID] [--status S] [--list] [--summary] [--format pretty|cwm|json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from opencwm.errors import UsageError as CliError
from opencwm.errors import one_line
from opencwm.sandbox.cli import add_sandbox_args, sandbox_config


def add_tracer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracer")
    group.add_argument("--tracer", choices=["native", "settrace", "monitoring"], default=None,
                       help="tracing backend: native (C, where built), settrace (pure Python), monitoring (3.12+) "
                            "(default: native where built, else monitoring on 3.12+, else settrace)")
    group.add_argument("--max-frames", type=int, default=10_000, help="frames per trace (default: %(default)s)")
    group.add_argument("--max-bytes", type=int, default=1_000_000,
                       help="characters of rendered values per trace (default: %(default)s)")
    group.add_argument("--max-value-chars", type=int, default=1000,
                       help="characters per rendered value (default: %(default)s)")


def limits(args):
    from opencwm.trace.tracer import Limits

    for name in ("max_frames", "max_bytes", "max_value_chars"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    return Limits(args.max_frames, args.max_bytes, args.max_value_chars)


def _trace_json(trace) -> dict:
    frames = [{"event": f.event, "line": f.line, "lineno": f.lineno, "locals": f.locals, "value": f.value}
              for f in trace.frames]
    return {"status": trace.status, "error": trace.error, "frames": frames}


def _print_trace(trace, fmt: str) -> None:
    if fmt == "cwm":
        from opencwm.trace.codec import encode

        print(encode(trace))
    elif fmt == "json":
        print(json.dumps(_trace_json(trace), indent=1))
    else:
        from opencwm.trace.display import format_trace

        print(format_trace(trace))


# -- trace run ------------------------------------------------------------------------------------------------------
def cmd_trace_run(args) -> int:
    from dataclasses import asdict

    from opencwm.trace.inputs import SourceError, python_file_items
    from opencwm.trace.program import ProgramError
    from opencwm.trace.record import ERROR, Trace

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{args.file}: no such file")
    try:
        items = python_file_items(path, [args.call] if args.call else None)
    except (SourceError, ProgramError) as exc:
        raise CliError(str(exc)) from None
    item = items[0]
    kwargs = {**item.kwargs, "limits": asdict(limits(args)), "backend": args.tracer}
    if args.no_sandbox:
        from opencwm.trace.jobs import trace_program_job

        result = trace_program_job(**kwargs)
        trace = Trace.from_dict(result["trace"])
    else:
        from opencwm.sandbox import Sandbox, SandboxError, SandboxUnavailable
        from opencwm.trace.inputs import failed_trace
        from opencwm.trace.jobs import PRELOAD

        try:
            with Sandbox(sandbox_config(args, preload=PRELOAD)) as box:
                outcome = box.run(item.job, **kwargs)
        except (SandboxError, SandboxUnavailable) as exc:
            raise CliError(str(exc)) from None
        trace = Trace.from_dict(outcome.result["trace"]) if outcome.ok else failed_trace(item, outcome)
    call = item.kwargs["call"]
    which = (f"{call}, the first of the {len(items)} calls at the end of {path.name} (--call picks another)"
             if len(items) > 1 else call)
    if args.format == "json":  # the outcome as data, failed or not (status timeout, memory, error, ...)
        print(json.dumps({"call": call, **_trace_json(trace)}, indent=1))
    if trace.status == ERROR or not trace.frames:
        print(f"opencwm: {call}: {one_line(trace.error or trace.status)}", file=sys.stderr)
        return 1
    if args.format == "cwm":  # the text is exactly CWM's: which call, on stderr
        print(f"opencwm: trace of {which}", file=sys.stderr)
        _print_trace(trace, "cwm")
    elif args.format == "pretty":
        print(f"trace of {which}")
        _print_trace(trace, "pretty")
    return 0


# -- trace collect --------------------------------------------------------------------------------------------------
def cmd_trace_collect(args) -> int:
    from opencwm.shards import DatasetError
    from opencwm.trace.collect import PRELOAD, CollectConfig, collect
    from opencwm.trace.inputs import SourceError
    from opencwm.trace.program import ProgramError

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.first_items is not None and args.first_items < 1:
        raise CliError("--first-items must be at least 1")
    config = CollectConfig(
        workers=args.workers, sandbox=sandbox_config(args, preload=PRELOAD), limits=limits(args),
        tracer_backend=args.tracer, ray_address=args.ray, max_items=args.max_items, first_items=args.first_items,
        progress=not args.quiet,
        rows_per_shard=args.rows_per_shard,
    )
    try:
        summary = collect(args.source, args.out, config, calls=args.call or None)
    except (SourceError, ProgramError, DatasetError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    if summary["invalid_items"]:
        print(f"opencwm: {summary['invalid_items']} item(s) are not valid and were stored as rows with status error "
              f"(first: {summary['first_invalid']})", file=sys.stderr)
    return 0


# -- trace show -----------------------------------------------------------------------------------------------------
def cmd_trace_show(args) -> int:
    from collections import Counter

    from opencwm.shards import DatasetError, read_manifest
    from opencwm.trace.collect import read_traces

    if args.limit < 0:
        raise CliError("--limit must be 0 or more")
    try:
        manifest = read_manifest(args.dir)
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    statuses, frames, chosen, matched = Counter(), [], [], 0
    for row, trace in read_traces(args.dir):
        statuses[trace.status] += 1
        frames.append(len(trace.frames))
        if (args.id is None or row["id"] == args.id) and (args.status is None or trace.status == args.status):
            matched += 1
            if args.list or len(chosen) < args.limit:
                chosen.append((row, trace))
    if args.id is not None and not matched:
        raise CliError(f"no trace with id {args.id!r} in {args.dir}")
    frames.sort()
    summary = {
        "dataset": str(args.dir), "traces": sum(statuses.values()), "shards": len(manifest["shards"]),
        "statuses": dict(statuses),
        "frames_median": frames[len(frames) // 2] if frames else 0,
        "frames_p95": frames[int(len(frames) * 0.95)] if frames else 0,
    }
    if args.summary:
        print(json.dumps(summary))
        return 0
    if args.format == "json":  # JSON Lines, one trace per line (pipeable to jq)
        for row, trace in chosen:
            line = {"id": row["id"], "origin": row["origin"], "status": trace.status, "error": trace.error,
                    "frames": len(trace.frames)} if args.list else {"id": row["id"], "origin": row["origin"],
                                                                    **_trace_json(trace)}
            print(json.dumps(line))
        return 0
    if args.list:
        for row, trace in chosen:
            error = f"\t{one_line(trace.error)}" if trace.error else ""  # a program's text: kept to its column
            print(f"{row['id']}\t{trace.status}\t{len(trace.frames)} frames{error}")
        return 0
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    print(f"{args.dir}: {summary['traces']} traces ({counts}) in {summary['shards']} shards; frames per trace: "
          f"median {summary['frames_median']}, 95th percentile {summary['frames_p95']}; showing {len(chosen)} of "
          f"{matched}")
    for row, trace in chosen:
        print(f"\n=== {row['id']} ({row['origin']}): {trace.status} ===")
        if trace.frames:
            _print_trace(trace, args.format)
        else:
            print(trace.error or "(no frames)")
    return 0


def add_parser(areas) -> None:
    from opencwm.trace.record import STATUSES

    trace = areas.add_parser("trace", help="execution traces in CWM's format")
    commands = trace.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="trace one call of a Python file and print the trace",
                              description="Trace one call of a Python file (in the sandbox) and print it.")
    run.add_argument("file", help="Python file defining the function")
    run.add_argument("--call", help='call expression, e.g. "f(1, 2)" (default: the first call at the end of the '
                                    'file: f(1), print(f(1)), x = f(1), or in an if __name__ == "__main__": block)')
    run.add_argument("--format", choices=["pretty", "cwm", "json"], default="pretty",
                     help="pretty: a table for people; cwm: the exact CWM trace text; json: one object")
    run.add_argument("--no-sandbox", action="store_true", help="run in this process (trusted code only)")
    add_sandbox_args(run, timeout=30.0)
    add_tracer_args(run)
    run.set_defaults(func=cmd_trace_run)

    coll = commands.add_parser(
        "collect", help="trace many programs into Parquet shards",
        description="Trace every item of SOURCE into Parquet shards under --out. SOURCE is a .jsonl file of "
                    '{"code", "input", "id"} items (CruxEval schema), a .py file with call expressions, or a '
                    "package/repository directory whose pytest suite is traced. Resumable: rerunning skips "
                    "finished items.")
    coll.add_argument("source")
    coll.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    coll.add_argument("--call", action="append", help="call expression for a .py source (repeatable)")
    coll.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel sandboxes")
    coll.add_argument("--ray", metavar="ADDRESS", help='spread work over a Ray cluster ("local" starts one here)')
    coll.add_argument("--max-items", type=int, help="stop after this many new items")
    coll.add_argument("--first-items", type=int,
                      help="only the source's first N items (e.g. test files of a repository); a rerun completes them")
    coll.add_argument("--rows-per-shard", type=int, default=2000, help="rows per Parquet shard")
    coll.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sandbox_args(coll, timeout=10.0)
    add_tracer_args(coll)
    coll.set_defaults(func=cmd_trace_collect)

    show = commands.add_parser(
        "show", help="summarise a collected dataset, list its traces or print some",
        description="Print a dataset's summary and its first traces. --format json prints JSON Lines only (one "
                    "trace per line, for jq); --list lists every trace's id, status and length; --summary prints "
                    "the summary as one JSON object.")
    show.add_argument("dir")
    show.add_argument("--limit", type=int, default=1, help="traces to print")
    show.add_argument("--id", help="only the trace with this id")
    show.add_argument("--status", choices=STATUSES, help="only traces with this status")
    show.add_argument("--list", action="store_true", help="every matching trace's id, status and length")
    show.add_argument("--summary", action="store_true", help="the summary as one JSON object, nothing else")
    show.add_argument("--format", choices=["pretty", "cwm", "json"], default="pretty",
                      help="pretty or cwm: a summary, then the traces; json: JSON Lines only")
    show.set_defaults(func=cmd_trace_show)

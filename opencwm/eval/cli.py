"""``opencwm eval``: evaluate a checkpoint.

    opencwm eval trace --model runs/pt/checkpoints/step-000500/model --traces runs/heldout [--cruxeval hf]
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.errors import UsageError as CliError


def cmd_eval_trace(args) -> int:
    from opencwm.eval.cruxeval import cruxeval_report
    from opencwm.eval.trace_eval import TraceEvaluator, evaluate_traces, format_report
    from opencwm.shards import DatasetError, read_manifest

    if not args.traces and not args.cruxeval:
        raise CliError("nothing to evaluate: give --traces DIR (held-out traces) and/or --cruxeval PATH|hf")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.window is not None and args.window < 2:
        raise CliError("--window must be at least 2 tokens")
    if not (Path(args.model) / "config.json").is_file():
        raise CliError(f"--model {args.model}: not a checkpoint model directory (no config.json)")
    if args.traces:
        try:
            read_manifest(args.traces)
        except DatasetError as exc:
            raise CliError(f"--traces {exc}") from None
    from opencwm.model import CWM
    from opencwm.model.hf import CheckpointError
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.collect import read_traces

    try:
        model = CWM.from_pretrained(args.model).eval()
        tokenizer = Tokenizer.of_checkpoint(args.model, args.tokenizer)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    evaluator = TraceEvaluator(model, tokenizer, max_trace_tokens=args.max_trace_tokens, batch_size=args.batch_size,
                               progress=not args.quiet, window=args.window)
    report: dict = {"model": str(args.model)}
    if args.traces:
        try:
            report.update(evaluate_traces(evaluator, read_traces(args.traces), limit=args.limit,
                                          max_frames_per_trace=args.max_frames_per_trace))
        except DatasetError as exc:
            raise CliError(str(exc)) from None
    if args.cruxeval:
        report.update(cruxeval_report(evaluator, args.cruxeval, args.limit))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def add_parser(areas) -> None:
    evaluation = areas.add_parser("eval", help="evaluate a checkpoint")
    eval_commands = evaluation.add_subparsers(dest="command", metavar="COMMAND", required=True)
    trace_eval = eval_commands.add_parser(
        "trace", help="world modeling: next-frame and rollout exact match, output prediction, CruxEval-O")
    trace_eval.add_argument("--model", required=True, help="checkpoint model directory (Hugging Face format)")
    trace_eval.add_argument("--tokenizer", help="tokenizer directory (default: the training run's)")
    trace_eval.add_argument("--traces", help="held-out trace dataset (opencwm trace collect output)")
    trace_eval.add_argument("--cruxeval", help='CruxEval JSONL path, or "hf" for the public dataset')
    trace_eval.add_argument("--limit", type=int, help="at most this many traces / CruxEval items")
    trace_eval.add_argument("--max-frames-per-trace", type=int, help="score at most this many frames per trace")
    trace_eval.add_argument("--max-trace-tokens", type=int, default=1024, help="longest rollout, in tokens")
    trace_eval.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    trace_eval.add_argument("--window", type=int, help="score next frames in windows of this many tokens, each "
                                                       "starting with the source, as a model trained on "
                                                       "trace_windows of that length saw them (default: whole traces)")
    trace_eval.add_argument("--out", help="also write the report as JSON to this file")
    trace_eval.add_argument("--json", action="store_true", help="print the report as one JSON object, not a table")
    trace_eval.add_argument("--quiet", action="store_true", help="no progress display")
    trace_eval.set_defaults(func=cmd_eval_trace)

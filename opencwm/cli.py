"""The ``opencwm`` command: one entry point, a subcommand per area.

    opencwm trace run FILE.py --call "f(1, 2)" [--format pretty|cwm|json]
    opencwm trace collect SOURCE --out DIR [--workers N] [--ray ADDRESS]
    opencwm trace show DIR [--limit N] [--id ID] [--format pretty|cwm|json]
    opencwm data code --out runs/code [--holdout cruxeval.jsonl]
    opencwm data programs --out runs/programs --count 1000 --difficulty 2
    opencwm train --stage pretrain --preset tiny --out runs/pt --data code=runs/code:0.5 --data traces=runs/tr:0.5
    opencwm eval trace --model runs/pt/checkpoints/step-000500/model --traces runs/heldout --cruxeval hf
    opencwm speedrun --out runs/speedrun [--cruxeval PATH|hf|none]
    opencwm model info cwm-32b --quant int8 --gpu-gb 80
    opencwm sandbox check
    opencwm forage env|mutate|import|run|show ...   (see opencwm.forage.cli)

Imports stay inside the commands, so ``opencwm --help`` and ``trace run`` start fast (nothing imports torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or action.help == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """opencwm's parsers (subcommands included): defaults shown in every help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A usage error as one line (argparse prints the whole usage first), exit status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_sandbox_choice(parser) -> None:
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "unshare", "rlimits", "gvisor"],
                        help="isolation backend (default: the best that works here)")


def _add_sandbox_args(parser: argparse.ArgumentParser, timeout: float) -> None:
    group = parser.add_argument_group("sandbox")
    _add_sandbox_choice(group)
    group.add_argument("--timeout", type=float, default=timeout, help="seconds per item (default: %(default)s)")
    group.add_argument("--memory-mb", type=int, default=2048, help="memory limit per item (default: %(default)s)")
    group.add_argument("--python", default=sys.executable,
                       help="interpreter that runs the traced code, any CPython >= 3.11 (default: this one)")


def _add_tracer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracer")
    group.add_argument("--tracer", choices=["native", "settrace", "monitoring"], default=None,
                       help="tracing backend: native (C, where built), settrace (pure Python), monitoring (3.12+) "
                            "(default: native where built, else monitoring on 3.12+, else settrace)")
    group.add_argument("--max-frames", type=int, default=10_000, help="frames per trace (default: %(default)s)")
    group.add_argument("--max-bytes", type=int, default=1_000_000,
                       help="characters of rendered values per trace (default: %(default)s)")
    group.add_argument("--max-value-chars", type=int, default=1000,
                       help="characters per rendered value (default: %(default)s)")


def _limits(args):
    from opencwm.trace.tracer import Limits

    for name in ("max_frames", "max_bytes", "max_value_chars"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    return Limits(args.max_frames, args.max_bytes, args.max_value_chars)


def _sandbox_config(args, preload=()):
    from opencwm.sandbox import SandboxConfig

    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    if args.memory_mb < 64:
        raise CliError("--memory-mb must be at least 64")
    if not Path(args.python).exists():
        raise CliError(f"--python {args.python}: no such interpreter")
    return SandboxConfig(backend=args.sandbox, timeout=args.timeout, memory_mb=args.memory_mb, python=args.python,
                         preload=tuple(preload))


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
        from opencwm.trace.pretty import format_trace

        print(format_trace(trace))


# -- trace run ------------------------------------------------------------------------------------------------------
def cmd_trace_run(args) -> int:
    from dataclasses import asdict

    from opencwm.trace.program import ProgramError
    from opencwm.trace.record import ERROR, Trace
    from opencwm.trace.sources import SourceError, python_file_items

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{args.file}: no such file")
    try:
        items = python_file_items(path, [args.call] if args.call else None)
    except (SourceError, ProgramError) as exc:
        raise CliError(str(exc)) from None
    item = items[0]
    limits = _limits(args)
    kwargs = {**item.kwargs, "limits": asdict(limits), "backend": args.tracer}
    if args.no_sandbox:
        from opencwm.trace.jobs import trace_program_job

        result = trace_program_job(**kwargs)
        trace = Trace.from_dict(result["trace"])
    else:
        from opencwm.sandbox import Sandbox, SandboxError, SandboxUnavailable

        try:
            with Sandbox(_sandbox_config(args, preload=("opencwm.trace.jobs",))) as box:
                outcome = box.run(item.job, **kwargs)
        except (SandboxError, SandboxUnavailable) as exc:
            raise CliError(str(exc)) from None
        if outcome.ok:
            trace = Trace.from_dict(outcome.result["trace"])
        else:
            trace = Trace(item.kwargs["source"], 0, status=outcome.status, error=outcome.error)
    call = item.kwargs["call"]
    which = (f"{call}, the first of the {len(items)} calls at the end of {path.name} (--call picks another)"
             if len(items) > 1 else call)
    if trace.status == ERROR or not trace.frames:
        if args.format == "json":  # the outcome as data too (status timeout, memory, error, ...)
            print(json.dumps({"call": call, **_trace_json(trace)}, indent=1))
        print(f"opencwm: {call}: {trace.error or trace.status}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"call": call, **_trace_json(trace)}, indent=1))
    elif args.format == "cwm":  # the text is exactly CWM's: which call, on stderr
        print(f"opencwm: trace of {which}", file=sys.stderr)
        _print_trace(trace, "cwm")
    else:
        print(f"trace of {which}")
        _print_trace(trace, "pretty")
    return 0


# -- trace collect --------------------------------------------------------------------------------------------------
def cmd_trace_collect(args) -> int:
    from opencwm.shards import DatasetError
    from opencwm.trace.collect import PRELOAD, CollectConfig, collect
    from opencwm.trace.program import ProgramError
    from opencwm.trace.sources import SourceError

    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.first_items is not None and args.first_items < 1:
        raise CliError("--first-items must be at least 1")
    config = CollectConfig(
        workers=args.workers, sandbox=_sandbox_config(args, preload=PRELOAD), limits=_limits(args),
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
            error = f"\t{trace.error}" if trace.error else ""
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


# -- sandbox check --------------------------------------------------------------------------------------------------
def cmd_sandbox_check(args) -> int:
    from dataclasses import replace

    from opencwm.sandbox import LAYERS, SandboxError, SandboxUnavailable
    from opencwm.sandbox.check import format_header, format_verdict, run_checks

    unknown = [layer for layer in args.without if layer not in LAYERS]
    if unknown:
        raise CliError(f"--without {unknown[0]}: no such layer (choose from {', '.join(LAYERS)})")
    config = replace(_sandbox_config(args), layers=tuple(layer for layer in LAYERS if layer not in args.without))
    print(format_header())
    try:
        backend, verdicts = run_checks(config, report=lambda v: print(format_verdict(v), flush=True))
    except (SandboxError, SandboxUnavailable) as exc:
        raise CliError(str(exc)) from None
    failed = [v for v in verdicts if not v.held]
    layers = ", ".join(config.layers) or "none"
    print(f"backend {backend}, layers: {layers}: {len(verdicts) - len(failed)} of {len(verdicts)} probes held"
          + (f"; FAILED: {', '.join(sorted({v.guarantee for v in failed}))}" if failed else ""))
    return 1 if failed else 0


# -- data -----------------------------------------------------------------------------------------------------------
def _holdout(path):
    if path is None:
        return None
    from opencwm.data.corpora import Holdout

    try:
        return Holdout(json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"--holdout {path}: cannot read held-out programs ({exc})") from None


def cmd_data_code(args) -> int:
    from opencwm.data.corpora import build_code_corpus
    from opencwm.shards import DatasetError

    try:
        summary = build_code_corpus(args.out, include_site_packages=not args.stdlib_only, max_files=args.max_files,
                                    holdout=_holdout(args.holdout))
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    return 0


def cmd_data_programs(args) -> int:
    from opencwm.data.corpora import build_program_corpus
    from opencwm.shards import DatasetError

    if args.count < 1 or not 1 <= args.difficulty <= 5:
        raise CliError("--count must be positive and --difficulty between 1 and 5")
    try:
        summary = build_program_corpus(args.out, args.count, difficulty=args.difficulty, seed=args.seed,
                                       hard_share=args.hard_share, force=args.force)
    except (DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    return 0


# -- train ----------------------------------------------------------------------------------------------------------
def _parse_data(specs: list[str]) -> dict[str, tuple[Path, float]]:
    sources = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        path, _, weight = rest.rpartition(":") if ":" in rest else (rest, "", "1")
        if not sep or not name or not path:
            raise CliError(f"--data {spec!r}: expected NAME=DIR[:WEIGHT]")
        try:
            sources[name] = (Path(path), float(weight))
        except ValueError:
            raise CliError(f"--data {spec!r}: weight {weight!r} is not a number") from None
    return sources


def _check_train_args(args) -> dict[str, tuple[Path, float]]:
    """Every training argument checked before any work starts (no tokenizer trained, no model built, nothing
    written); returns the data sources."""
    from opencwm.shards import DatasetError, read_manifest

    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "vocab", "tokenizer_docs"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    if args.seq_len < 2:
        raise CliError("--seq-len must be at least 2")
    if not 0 <= args.warmup <= args.steps:
        raise CliError(f"--warmup {args.warmup} must be between 0 and --steps ({args.steps})")
    if args.init and not (Path(args.init) / "config.json").is_file():
        raise CliError(f"--init {args.init}: not a checkpoint model directory (no config.json)")
    sources = _parse_data(args.data)
    for name, (path, weight) in sources.items():
        if weight <= 0:
            raise CliError(f"--data {name}: the weight must be positive")
        try:
            manifest = read_manifest(path)
        except DatasetError as exc:
            raise CliError(f"--data {name}: {exc}") from None
        if not manifest.get("rows"):
            raise CliError(f"--data {name}: {path} is an empty dataset (no rows)")
    return sources


def _stage_documents(stage: str, path: str, tokenizer):
    """Training documents of a dataset for a stage: with ``sft``, trace datasets become chat examples (loss on the
    assistant's replies only); everything else trains on its text."""
    from opencwm.data.documents import documents
    from opencwm.shards import read_manifest

    if stage == "sft" and read_manifest(path).get("kind") == "opencwm.traces":
        from opencwm.data.sft import sft_documents

        return sft_documents(path, tokenizer)
    return documents(path, tokenizer)


def cmd_train(args) -> int:
    import torch

    from opencwm.data.documents import texts
    from opencwm.data.packing import PackedStream
    from opencwm.model import CWM, preset
    from opencwm.shards import DatasetError
    from opencwm.tokenizer import Tokenizer
    from opencwm.train import distributed
    from opencwm.train.loop import TrainConfig, Trainer

    sources = _check_train_args(args)
    out = Path(args.out)
    rank, world, device = (distributed.setup() if distributed.launched_by_torchrun()
                           else (0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    try:
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else out / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").exists() or (tokenizer_dir / "tokenizer.model").exists():
            tokenizer = Tokenizer.load(tokenizer_dir)
        elif args.tokenizer:
            raise CliError(f"--tokenizer {args.tokenizer}: no tokenizer.json or tokenizer.model there")
        else:  # train one on the first source (rank 0), the others wait and load it
            if rank == 0:
                first = next(iter(sources.values()))[0]
                Tokenizer.train(texts(first, limit=args.tokenizer_docs), vocab_size=args.vocab).save(tokenizer_dir)
            if world > 1:
                torch.distributed.barrier()
            tokenizer = Tokenizer.load(tokenizer_dir)
        docs = {name: _stage_documents(args.stage, path, tokenizer) for name, (path, _) in sources.items()}
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for name, found in docs.items():
        if not found:
            raise CliError(f"--data {name}: no training documents in {sources[name][0]} for --stage {args.stage}")
    if args.init:
        model = CWM.from_pretrained(args.init, device=device)
    else:
        overrides = {**tokenizer.config_fields(), "max_position_embeddings": max(args.seq_len, 1024)}
        with torch.device(device):
            model = CWM(preset(args.preset, **overrides))
        model.init_weights(seed=args.seed, zero_residual=args.optimizer == "muon")
    if model.config.vocab_size < tokenizer.vocab_size:
        raise CliError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's")
    stream = PackedStream(docs, {name: weight for name, (_, weight) in sources.items()}, seq_len=args.seq_len,
                          seed=args.seed + rank)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         optimizer=args.optimizer, muon_lr=args.muon_lr,
                         warmup_steps=args.warmup, schedule=args.schedule, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, log_every=args.log_every, compile=args.compile,
                         activation_checkpointing=args.activation_checkpointing, precision=args.precision)
    try:
        trainer = Trainer(model, stream, config, out, distributed=world > 1, tokenizer=tokenizer)
    except ValueError as exc:  # e.g. Muon under FSDP2
        raise CliError(str(exc)) from None
    if trainer.resume() and rank == 0:
        print(f"resumed from step {trainer.step}", file=sys.stderr)
    if rank == 0:
        tokenizer.save(out / "tokenizer")
    last = trainer.train(progress=rank == 0 and not args.quiet)
    if rank == 0:
        print(json.dumps({"out": str(out), "stage": args.stage, **last,
                          "checkpoint": str(trainer.checkpoints / (trainer.checkpoints / "latest").read_text())}))
    return 0


# -- eval -----------------------------------------------------------------------------------------------------------
def cmd_eval_trace(args) -> int:
    from opencwm.eval.trace_eval import TraceEvaluator, cruxeval_report, evaluate_traces, format_report
    from opencwm.shards import DatasetError, read_manifest

    if not args.traces and not args.cruxeval:
        raise CliError("nothing to evaluate: give --traces DIR (held-out traces) and/or --cruxeval PATH|hf")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
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
                               progress=not args.quiet)
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


# -- speedrun -------------------------------------------------------------------------------------------------------
def cmd_speedrun(args) -> int:
    from dataclasses import fields

    from opencwm.speedrun import SpeedrunConfig, speedrun

    values = {f.name: getattr(args, f.name) for f in fields(SpeedrunConfig) if getattr(args, f.name, None) is not None}
    if args.no_traces:
        values["traces"] = False
    if args.no_compile:
        values["compile"] = False
    for name in ("cruxeval", "repo_package"):
        if getattr(args, name) == "none":
            values[name] = None
    try:
        config = SpeedrunConfig(**values)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    report = speedrun(config, ablation=not args.no_ablation)
    print(json.dumps({k: v for k, v in report.items() if k != "difficulty"}))
    return 0


# -- model info -----------------------------------------------------------------------------------------------------
def cmd_model_info(args) -> int:
    from dataclasses import asdict

    from opencwm.model.config import PRESETS, CwmConfig, preset
    from opencwm.model.memory import Runtime, serving_memory

    if args.model in PRESETS:
        config = preset(args.model)
    else:
        path = Path(args.model)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.exists():
            raise CliError(f"{args.model}: not a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
        try:
            config = CwmConfig.load(config_path)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{config_path}: {exc}") from None
    if args.context < 1 or args.batch < 1:
        raise CliError("--context and --batch must be positive")
    if not 0 < args.gpu_utilization <= 1 or args.prefill_chunk < 1 or args.cuda_context_gib < 0:
        raise CliError("--gpu-utilization must be in (0, 1], --prefill-chunk positive, --cuda-context-gib >= 0")
    runtime = Runtime(gpu_utilization=args.gpu_utilization, cuda_context_gib=args.cuda_context_gib,
                      prefill_chunk=args.prefill_chunk)
    memory = serving_memory(config, quant=None if args.quant == "bf16" else args.quant, context=args.context,
                            batch=args.batch, runtime=runtime)
    n_global = config.layer_types.count("full_attention")
    report = {
        "model": args.model, "parameters": config.num_parameters,
        "parameters_billions": round(config.num_parameters / 1e9, 3),
        "quant": args.quant, "context": args.context, "batch": args.batch, "global_layers": n_global,
        "local_layers": config.num_hidden_layers - n_global, "sliding_window": config.sliding_window,
        **memory.as_dict(), "assumptions": asdict(runtime),
    }
    if args.gpu_gb is not None:
        report["gpu_gib"] = args.gpu_gb
        report["usable_gib"] = round(args.gpu_gb * runtime.gpu_utilization, 2)
        report["fits"] = memory.fits(args.gpu_gb, runtime)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model        {args.model}: {report['parameters_billions']} B parameters "
          f"({config.num_hidden_layers} layers: {n_global} global, {report['local_layers']} local, "
          f"window {config.sliding_window})")
    print(f"weights      {report['weights_gib']} GiB ({args.quant})")
    print(f"KV cache     {report['kv_cache_gib']} GiB (bf16, context {args.context}, batch {args.batch}; "
          f"local layers capped at {min(args.context, config.sliding_window)} tokens)")
    print(f"activations  {report['activations_gib']} GiB (a prefill chunk of "
          f"{min(runtime.prefill_chunk, args.context * args.batch)} tokens)")
    print(f"CUDA context {runtime.cuda_context_gib} GiB")
    print(f"total        {report['total_gib']} GiB")
    if args.gpu_gb is not None:
        verdict = "fits" if report["fits"] else "does NOT fit"
        print(f"GPU          {verdict} in {args.gpu_gb} GiB: the engine uses {runtime.gpu_utilization:.0%} of it "
              f"({report['usable_gib']} GiB)")
    print("assumptions  a vLLM-like engine: --gpu-utilization (vLLM's gpu_memory_utilization), --cuda-context-gib, "
          "--prefill-chunk (max_num_batched_tokens) change them")
    return 0


_SPEEDRUN_HELP = {
    "cruxeval": "a CruxEval JSONL, hf (the public dataset) or none; ",
    "repo_package": "an installed package whose own test suite is traced for repository-level traces, or none; ",
    "repo_test_files": "how many of its test files are run (the first N); ",
    "device": "where the model trains and is evaluated (cpu, cuda); the data is built on the CPUs; ",
    "time_budget": "seconds for everything: the stages' steps are scaled down to fit the speed measured here "
                   "(0: every step of the recipe, however long); ",
}


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    from opencwm.model.config import PRESETS
    from opencwm.trace.record import STATUSES

    try:
        release = version("opencwm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown"
    parser = _Parser(prog="opencwm", description="opencwm: an open Code World Model system.")
    parser.add_argument("--version", action="version", version=f"opencwm {release}")
    areas = parser.add_subparsers(dest="area", metavar="AREA", required=True)

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
    _add_sandbox_args(run, timeout=30.0)
    _add_tracer_args(run)
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
    coll.add_argument("--workers", type=int, default=_cpu_count(), help="parallel sandboxes (default: %(default)s)")
    coll.add_argument("--ray", metavar="ADDRESS", help='spread work over a Ray cluster ("local" starts one here)')
    coll.add_argument("--max-items", type=int, help="stop after this many new items")
    coll.add_argument("--first-items", type=int,
                      help="only the source's first N items (e.g. test files of a repository); a rerun completes them")
    coll.add_argument("--rows-per-shard", type=int, default=2000, help="rows per Parquet shard")
    coll.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_sandbox_args(coll, timeout=10.0)
    _add_tracer_args(coll)
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

    data = areas.add_parser("data", help="training corpora")
    data_commands = data.add_subparsers(dest="command", metavar="COMMAND", required=True)
    code = data_commands.add_parser("code", help="Python source of the stdlib and installed packages, deduplicated, "
                                                 "with licenses, as Parquet shards")
    code.add_argument("--out", required=True, help="dataset directory (created or resumed)")
    code.add_argument("--stdlib-only", action="store_true", help="the standard library only, no site-packages")
    code.add_argument("--max-files", type=int, help="look at the first N files only (default: all)")
    code.add_argument("--holdout", help="JSONL of {code, id} programs to keep out: files containing one are "
                                        "dropped (e.g. CruxEval; default: none)")
    code.set_defaults(func=cmd_data_code)
    programs = data_commands.add_parser("programs", help="synthetic programs with inputs (then: opencwm trace "
                                                         "collect DIR --out TRACES)")
    programs.add_argument("--out", required=True,
                          help="dataset directory (created, or resumed when made with the same options)")
    programs.add_argument("--count", type=int, default=1000, help="programs to generate")
    programs.add_argument("--difficulty", type=int, default=2, choices=range(1, 6), metavar="{1..5}",
                          help="1 (easiest) to 5")
    programs.add_argument("--seed", type=int, default=0, help="random seed")
    programs.add_argument("--hard-share", type=float, default=0.0,
                          help="share of programs one difficulty level up (default: %(default)s)")
    programs.add_argument("--force", action="store_true",
                          help="start --out over when it was made with other options (default: refuse)")
    programs.set_defaults(func=cmd_data_programs)

    train = areas.add_parser(
        "train", help="train a CWM (any stage) on corpora; resumable; data-parallel under torchrun",
        description="One loop for every stage. Example: opencwm train --stage pretrain --preset tiny --out runs/pt "
                    "--data code=runs/code:0.5 --data traces=runs/traces:0.5 --steps 500")
    train.add_argument("--stage", choices=["pretrain", "midtrain", "sft"], default="pretrain",
                       help="sft: trace datasets become chat examples ('what does this call return?', with and "
                            "without a <think> walk through the execution), learned on the assistant's tokens")
    train.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size (ignored with --init)")
    train.add_argument("--init", help="start from this checkpoint (e.g. the previous stage's model directory)")
    train.add_argument("--out", required=True, help="run directory: tokenizer, checkpoints, metrics.jsonl (resumed)")
    train.add_argument("--data", action="append", required=True, metavar="NAME=DIR[:WEIGHT]",
                       help="a code, traces or trajectories dataset and its mixture weight (repeatable)")
    train.add_argument("--tokenizer", help="tokenizer directory (default: train one on the first --data source)")
    train.add_argument("--vocab", type=int, default=4096, help="BPE size when training a tokenizer")
    train.add_argument("--tokenizer-docs", type=int, default=5000, help="documents a new tokenizer is trained on")
    train.add_argument("--steps", type=int, default=500, help="optimizer steps")
    train.add_argument("--batch-size", type=int, default=8, help="sequences per step and process")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per step")
    train.add_argument("--seq-len", type=int, default=1024, help="tokens per packed sequence")
    train.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate (default: %(default)s)")
    train.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                       help="muon: Muon for the blocks' matrices, AdamW at --lr for embeddings, head and norms; "
                            "single process only (default: %(default)s)")
    train.add_argument("--muon-lr", type=float, default=0.02, help="Muon's learning rate (default: %(default)s)")
    train.add_argument("--warmup", type=int, default=50, help="warm-up steps (at most --steps)")
    train.add_argument("--schedule", choices=["wsd", "cosine"], default="wsd",
                       help="learning-rate schedule after warm-up: warmup-stable-decay or cosine")
    train.add_argument("--seed", type=int, default=0, help="seed of the weights and the data mixture")
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    train.add_argument("--log-every", type=int, default=10, help="steps between metrics lines")
    train.add_argument("--compile", action="store_true", help="torch.compile each block")
    train.add_argument("--activation-checkpointing", action="store_true",
                       help="recompute each block's activations in the backward (less memory)")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                       help="auto: bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere (default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress display")
    train.set_defaults(func=cmd_train)

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
    trace_eval.add_argument("--out", help="also write the report as JSON to this file")
    trace_eval.add_argument("--json", action="store_true", help="print the report as one JSON object, not a table")
    trace_eval.add_argument("--quiet", action="store_true", help="no progress display")
    trace_eval.set_defaults(func=cmd_eval_trace)

    run = areas.add_parser("speedrun", help="corpora -> tokenizer -> pretrain -> midtrain -> SFT -> eval, with the "
                                            "no-traces ablation; writes report.md and report.json")
    from opencwm.speedrun import SpeedrunConfig

    defaults = SpeedrunConfig()
    for name in ("out", "preset", "train_programs", "heldout_programs", "difficulty", "hard_share", "code_files",
                 "repo_package", "repo_test_files", "vocab", "seq_len", "batch_size", "pretrain_steps",
                 "midtrain_steps", "sft_steps", "lr", "optimizer", "muon_lr", "schedule", "eval_traces",
                 "max_trace_tokens", "cruxeval", "cruxeval_limit", "seed", "device", "time_budget"):
        default = getattr(defaults, name)
        run.add_argument(f"--{name.replace('_', '-')}", type=type(default) if default is not None else str,
                         default=None, help=_SPEEDRUN_HELP.get(name, "") + f"default: {default}")
    run.add_argument("--no-traces", action="store_true", help="run only the ablation (code instead of traces)")
    run.add_argument("--no-ablation", action="store_true", help="skip the no-traces comparison run")
    run.add_argument("--no-compile", action="store_true", help="train eagerly (no torch.compile of the blocks)")
    run.set_defaults(func=cmd_speedrun)

    model = areas.add_parser("model", help="the CWM transformer")
    model_commands = model.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = model_commands.add_parser(
        "info", help="parameters, weight and KV-cache memory, and whether a model fits a GPU (no weights loaded)")
    info.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a checkpoint directory")
    info.add_argument("--quant", choices=["bf16", "int8", "fp8"], default="bf16", help="weight format")
    info.add_argument("--context", type=int, default=131072, help="tokens held in the KV cache (default: %(default)s)")
    info.add_argument("--batch", type=int, default=1, help="sequences held in the KV cache")
    info.add_argument("--gpu-gb", type=float, help="GPU memory in GiB, to check the fit")
    info.add_argument("--gpu-utilization", type=float, default=0.9,
                      help="share of the GPU the serving engine takes (vLLM's gpu_memory_utilization)")
    info.add_argument("--cuda-context-gib", type=float, default=1.0, help="CUDA context and library workspaces")
    info.add_argument("--prefill-chunk", type=int, default=8192,
                      help="tokens prefilled at once (vLLM's max_num_batched_tokens)")
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    info.set_defaults(func=cmd_model_info)

    sandbox = areas.add_parser("sandbox", help="the sandbox for untrusted code")
    sandbox_commands = sandbox.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = sandbox_commands.add_parser(
        "check", help="show the backend in use and run hostile probes (exit 1 if one is not contained)")
    _add_sandbox_args(check, timeout=3.0)
    check.add_argument("--without", action="append", default=[], metavar="LAYER",
                       help="turn a defence layer off, to see what it holds (repeatable; capabilities, seccomp, "
                            "mounts, cgroup, tmpfs, nondumpable)")
    check.set_defaults(func=cmd_sandbox_check)

    from opencwm.forage.cli import add_parser as add_forage_parser

    add_forage_parser(areas)
    return parser


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"opencwm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opencwm: interrupted (finished results are kept)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): not an error; nothing more to write
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # python -m opencwm.cli: run the imported module, so its exception classes are shared
    from opencwm.cli import main as package_main

    sys.exit(package_main())

"""Speedrun recipe variants at fixed token budgets: which sequence length, model size, batch size or learning rate
predicts execution best for the tokens a machine can train in the speedrun's time?

Each variant trains the speedrun's stages (pretrain, midtrain, SFT, in the recipe's proportions) from the data of a
finished or prepared speedrun (its ``shared`` folder: corpora and tokenizer) for a given number of training
tokens, then scores teacher-forced next-frame prediction on the held-out traces: frame exact match, token
accuracy, and frame exact match by where a frame ends in its trace (buckets doubling from ``--first-bucket``
tokens), which shows what training on sequences shorter than the traces costs.

    python benchmarks/recipe_sweep.py --data runs/speedrun/shared --variants benchmarks/recipe_variants.json \
        [--device cuda] [--compile] [--out runs/recipe-sweep.jsonl] [--budget-s 600] [--init STAGE_DIR]

A variants file is a JSON list of objects: ``name``; ``tokens`` (training tokens of the whole run); any
``SpeedrunConfig`` field (``seq_len``, ``batch_size``, ``lr``, ``muon_lr``, ...); optionally ``model``, overrides of
the preset's config (``hidden_size``, ``num_hidden_layers``, ...). ``benchmarks/recipe_variants.json`` holds the
sweep recorded in RESULTS.md: token budgets of 420 s of training (one speedrun run's share of ``make run``) on
the 2-core AMD EPYC at each variant's measured tokens/s, so a GPU evaluates in minutes what the CPU speedrun
would reach. With ``--init`` (a stage folder of a finished run, e.g. ``runs/speedrun/traces/pretrain``) every variant
starts from that stage's latest checkpoint and trains only the stages it gives steps (``recipe_variants_midtrain.json``
and ``recipe_variants_sft.json`` are such sweeps). Results are appended to ``--out`` as they finish; a rerun skips
the variants already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.speedrun import (
    STAGES,
    SpeedrunConfig,
    data_paths,
    new_model,
    reading_window,
    train_model,
    training_documents,
)

CONFIG_FIELDS = {f.name for f in fields(SpeedrunConfig)}


def load_variants(path: Path) -> list[dict]:
    try:
        variants = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"recipe_sweep: cannot read variants {path}: {exc}") from None
    for variant in variants:
        missing = [key for key in ("name", "tokens") if key not in variant]
        unknown = sorted(set(variant) - CONFIG_FIELDS - {"name", "tokens", "model"})
        if missing or unknown:
            raise SystemExit(f"recipe_sweep: variant {variant}: "
                             + "; ".join([f"missing {', '.join(missing)}"] * bool(missing)
                                         + [f"unknown keys {', '.join(unknown)}"] * bool(unknown)))
    return variants


def stage_steps(config: SpeedrunConfig, tokens: int) -> dict[str, int]:
    """The recipe's steps per stage, scaled so that the whole run trains about ``tokens`` tokens."""
    recipe = {stage: getattr(config, f"{stage}_steps") for stage in STAGES}
    total = max(3, round(tokens / (config.batch_size * config.seq_len)))
    return {f"{stage}_steps": max(1, round(steps * total / sum(recipe.values()))) if steps else 0
            for stage, steps in recipe.items()}


def frame_scores(model, tokenizer, traces, first_bucket: int, window: int | None = None) -> dict:
    """Teacher-forced next-frame scores on ``traces``: frames exact, tokens right, tokens right by kind (``line``:
    the source line, copied from the context), frames exact by end position, and random-token copying; with
    ``window``, traces are shown cut into the training windows (see ``TraceEvaluator``)."""
    from opencwm.eval.copying import copying_accuracy, token_alphabet
    from opencwm.eval.trace_eval import TraceEvaluator
    from opencwm.trace.codec import encode

    by_position: dict = {}
    by_kind: dict = {}
    frames, tokens = TraceEvaluator(model.eval(), tokenizer, window=window).next_frame_scores(
        traces, by_kind=by_kind, by_position=by_position, first_position_bucket=first_bucket)
    return {"frame_exact_match": round(frames.rate, 4), "frame_token_accuracy": round(tokens.rate, 4),
            "frames": frames.total,
            "by_kind": {kind: round(score.rate, 3) for kind, score in sorted(by_kind.items())},
            "by_position": {str(edge): round(score.rate, 3) for edge, score in sorted(by_position.items())},
            "by_position_frames": {str(edge): score.total for edge, score in sorted(by_position.items())},
            "copying_accuracy": round(copying_accuracy(model, ids=token_alphabet(tokenizer, map(encode, traces))), 3),
            "copying_accuracy_vocab": round(copying_accuracy(model, low=0, high=min(tokenizer.special_ids.values())),
                                            3)}


def answer_scores(model, tokenizer, rows_and_traces, chat: bool) -> dict:
    """Output prediction on the held-out programs: the direct answer (``assert CALL == ``), and the chat answer
    that SFT teaches when the variant has an SFT stage."""
    from opencwm.eval.trace_eval import TraceEvaluator, held_out_programs

    evaluator = TraceEvaluator(model.eval(), tokenizer)
    programs = held_out_programs(rows_and_traces)
    out = {"output_exact_match_direct": round(evaluator.direct(programs).rate, 3)}
    if chat:
        out["output_exact_match_chat"] = round(evaluator.chat_answer(programs).rate, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a speedrun's shared folder (data/, tokenizer/)")
    parser.add_argument("--variants", type=Path, default=Path(__file__).with_name("recipe_variants.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks, as the CPU speedrun does")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe-sweep.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("runs/recipe-sweep"), help="the variants' checkpoints")
    parser.add_argument("--budget-s", type=float, default=0, help="start no variant after this many seconds (0: all)")
    parser.add_argument("--first-bucket", type=int, default=512)
    parser.add_argument("--init", type=Path, help="start every variant from the latest checkpoint of this stage "
                        "folder (e.g. runs/speedrun/traces/pretrain) instead of a fresh model; variants then set the "
                        "stages already trained to 0 steps")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import torch

    from opencwm.model import CWM
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.collect import read_traces
    from opencwm.train.loop import latest_checkpoint

    # every variant's shapes and windows compile FlexAttention (CUDA) anew in this one process: past dynamo's
    # default of 8 recompilations it would fall back to eager FlexAttention, which materialises the scores
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    paths = data_paths(args.data)
    missing = [str(p) for p in [args.data / "tokenizer", *paths.values()] if not p.exists()]
    if missing:
        raise SystemExit(f"recipe_sweep: {args.data} is not a speedrun's shared folder (missing {', '.join(missing)})")
    variants = load_variants(args.variants)
    done = {}
    if args.out.exists():
        done = {r["name"]: r for r in map(json.loads, args.out.read_text().splitlines()) if "error" not in r}
    start = time.monotonic()
    tokenizer = Tokenizer.load(args.data / "tokenizer")
    base = SpeedrunConfig(device=args.device, compile=args.compile, cruxeval=None, time_budget=0)
    tokenized: dict[int, dict[str, list]] = {}  # by sequence length (windowed views depend on it)
    rows = [(r, t) for r, t in read_traces(paths["heldout-traces"]) if t.status == "ok" and t.frames][:base.eval_traces]
    held = [t for _, t in rows]
    init = latest_checkpoint(args.init) if args.init else None
    if args.init and init is None:
        raise SystemExit(f"recipe_sweep: {args.init} holds no checkpoint")
    if init and any("model" in variant for variant in variants):
        raise SystemExit("recipe_sweep: --init takes the checkpoint's model; a variant's \"model\" cannot change it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        if variant["name"] in done:
            continue
        if args.budget_s and time.monotonic() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: the remaining variants are left for a rerun")
            break
        settings = {k: v for k, v in variant.items() if k in CONFIG_FIELDS}
        config = replace(base, **settings)
        config = replace(config, **stage_steps(config, variant["tokens"]))
        cache = tokenized.setdefault(config.seq_len, {})
        docs = training_documents(config, paths, tokenizer, reuse=cache)
        cache.update(docs)
        began = time.monotonic()
        model = (CWM.from_pretrained(init / "model", device=config.device) if init
                 else new_model(config, tokenizer, **variant.get("model", {})))
        last_stage, _, _ = train_model(config, args.work / variant["name"], paths, tokenizer, docs, model=model)
        trained = time.monotonic() - began
        # scored on an uncompiled copy of the weights: every new shape would recompile the compiled blocks
        model = CWM.from_pretrained(latest_checkpoint(last_stage) / "model", device=config.device)
        result = {"name": variant["name"], "tokens": variant["tokens"],
                  "steps": {stage: getattr(config, f"{stage}_steps") for stage in STAGES},
                  "parameters": sum(p.numel() for p in model.parameters()),
                  **frame_scores(model, tokenizer, held, args.first_bucket),
                  **answer_scores(model, tokenizer, rows, chat=config.sft_steps > 0),
                  "train_seconds": round(trained, 1)}
        if init:
            result["init"] = str(args.init)
        if reading_window(config):
            result["windowed"] = frame_scores(model, tokenizer, held, args.first_bucket, window=reading_window(config))
        print(json.dumps(result), flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        done[variant["name"]] = result
    if not args.no_record and done:
        append_row("recipe_sweep", " ".join(["python benchmarks/recipe_sweep.py", *sys.argv[1:]]),
                   row_figures([done[v["name"]] for v in variants if v["name"] in done], len(held), args.first_bucket))
    return 0


def row_figures(results: list[dict], traces: int, first_bucket: int) -> str:
    """The figures column of a RESULTS.md row for the variants' ``results`` (rows of ``--out``)."""
    figures = "; ".join(
        f"{r['name']} ({r['tokens'] / 1e6:.2f}M tokens): frames {100 * r['frame_exact_match']:.1f}%, tokens "
        f"{100 * r['frame_token_accuracy']:.1f}% (source lines {100 * r['by_kind'].get('line', 0):.1f}%), copying "
        f"{100 * r['copying_accuracy']:.1f}% of trace tokens, direct answers "
        f"{100 * r.get('output_exact_match_direct', float('nan')):.0f}%"
        + (f", chat {100 * r['output_exact_match_chat']:.0f}%" if "output_exact_match_chat" in r else "")
        + (f", from {r['init']}" if "init" in r else "") + ", by end position "
        + " / ".join(f"{100 * rate:.1f}%" for rate in r["by_position"].values())
        for r in results)
    return (f"teacher-forced on {traces} held-out traces, position buckets from {first_bucket} tokens doubling: "
            f"{figures}")


if __name__ == "__main__":
    sys.exit(main())

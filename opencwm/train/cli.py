"""``opencwm train``: any stage (pretrain, midtrain, SFT) on corpora; resumable; data-parallel under torchrun.

    opencwm train --stage pretrain --preset tiny --out runs/pt --data code=runs/code:0.5 --data traces=runs/tr:0.5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opencwm.errors import UsageError as CliError


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


DEFAULT_WARMUP = 50


def _check_train_args(args) -> dict[str, tuple[Path, float]]:
    """Every training argument checked before any work starts (no tokenizer trained, no model built, nothing
    written); returns the data sources."""
    from opencwm.shards import DatasetError, read_manifest

    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "vocab", "tokenizer_docs"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    if args.seq_len < 2:
        raise CliError("--seq-len must be at least 2")
    if args.sliding_window is not None and args.sliding_window < 1:
        raise CliError("--sliding-window must be at least 1")
    if args.warmup is None:
        args.warmup = min(DEFAULT_WARMUP, args.steps)
    elif not 0 <= args.warmup <= args.steps:
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


def cmd_train(args) -> int:
    import torch

    from opencwm.data.documents import source_documents, texts
    from opencwm.data.packing import PackedStream
    from opencwm.model import CWM
    from opencwm.model.factory import fresh_model
    from opencwm.shards import DatasetError
    from opencwm.tokenizer import Tokenizer
    from opencwm.train import distributed
    from opencwm.train.loop import TrainConfig, Trainer, latest_checkpoint

    sources = _check_train_args(args)
    out = Path(args.out)
    rank, world, device = (distributed.setup() if distributed.launched_by_torchrun()
                           else (0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    try:
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else out / "tokenizer"
        if args.tokenizer and not Tokenizer.exists(tokenizer_dir):
            raise CliError(f"--tokenizer {args.tokenizer}: no tokenizer.json or tokenizer.model there")
        first = next(iter(sources.values()))[0]  # a new tokenizer learns the first source (rank 0; the others wait)
        if rank == 0:
            Tokenizer.train_or_load(tokenizer_dir, lambda: texts(first, limit=args.tokenizer_docs),
                                    vocab_size=args.vocab)
        if world > 1:
            torch.distributed.barrier()
        tokenizer = Tokenizer.load(tokenizer_dir)
        docs = {name: source_documents(name, path, tokenizer, window=args.seq_len)
                for name, (path, _) in sources.items()}
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for name, found in docs.items():
        if not found:
            raise CliError(f"--data {name}: no training documents in {sources[name][0]} for --stage {args.stage}")
    if args.init:
        model = CWM.from_pretrained(args.init, device=device)
    else:
        overrides = {"sliding_window": args.sliding_window} if args.sliding_window else {}
        model = fresh_model(args.preset, tokenizer, seq_len=args.seq_len, seed=args.seed, device=device,
                            zero_residual=args.optimizer == "muon", **overrides)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise CliError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's")
    stream = PackedStream(docs, {name: weight for name, (_, weight) in sources.items()}, seq_len=args.seq_len,
                          seed=args.seed + rank)
    if not 0 <= args.decay_fraction <= 1:
        raise CliError(f"--decay-fraction {args.decay_fraction}: a share of the steps, 0 to 1")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         optimizer=args.optimizer, muon_lr=args.muon_lr,
                         warmup_steps=args.warmup, schedule=args.schedule, decay_fraction=args.decay_fraction,
                         seed=args.seed,
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
                          "checkpoint": str(latest_checkpoint(out))}))
    return 0


def add_parser(areas) -> None:
    from opencwm.model.config import PRESETS

    train = areas.add_parser(
        "train", help="train a CWM (any stage) on corpora; resumable; data-parallel under torchrun",
        description="One loop for every stage. Example: opencwm train --stage pretrain --preset tiny --out runs/pt "
                    "--data code=runs/code:0.5 --data traces=runs/traces:0.5 --steps 500")
    train.add_argument("--stage", choices=["pretrain", "midtrain", "sft"], default="pretrain",
                       help="the stage's name in the output; what it trains on is its --data sources")
    train.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model size (ignored with --init)")
    train.add_argument("--sliding-window", type=int, help="tokens the local-attention layers see (default: the "
                       "preset's; ignored with --init)")
    train.add_argument("--init", help="start from this checkpoint (e.g. the previous stage's model directory)")
    train.add_argument("--out", required=True, help="run directory: tokenizer, checkpoints, metrics.jsonl (resumed)")
    train.add_argument("--data", action="append", required=True, metavar="NAME=DIR[:WEIGHT]",
                       help="a code, traces or trajectories dataset and its share of the tokens (repeatable); "
                            "the name picks how a trace dataset is read: direct (its direct answers), sft (chat "
                            "examples, 'what does this call return?', with and without a <think> walk, learned "
                            "on the replies), sft_nothink (without the walk), skipped_calls (traces with nested "
                            "calls' bodies left out, as the neural debugger's next reads them), a name ending in "
                            "windows (traces in --seq-len windows that each start with the source); any other "
                            "name: the text")
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
    train.add_argument("--warmup", type=int, help=f"warm-up steps, at most --steps (default: {DEFAULT_WARMUP}, or "
                                                   "--steps when fewer)")
    train.add_argument("--schedule", choices=["wsd", "cosine"], default="wsd",
                       help="learning-rate schedule after warm-up: warmup-stable-decay or cosine")
    train.add_argument("--decay-fraction", type=float, default=0.2,
                       help="wsd: the final share of the steps that decays (0: a constant rate)")
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

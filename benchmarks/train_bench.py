"""Training pipeline overhead: tokens/s of the `tiny` preset through the whole pipeline (documents packed from a
real trace corpus by the mixture stream, the Trainer with its schedule, clipping, JSONL metrics and periodic
checkpoints) against the bare model step (forward, loss, backward, AdamW) on pre-made tensors, in the same run.

    python benchmarks/train_bench.py [--steps 40] [--repeats 3]

Alternates the two measurements ``--repeats`` times and reports medians; goal: the pipeline costs <= 5% over the
bare step. On a GPU the same script reports the bf16 MFU of the ``1b`` preset, bare and through the Trainer (its
own windowed tokens/s, leaving out the first window, which holds compilation), and what one checkpoint costs:

    python benchmarks/train_bench.py --preset 1b --preset-vocab --seq-len 8192 --batch-size 2 --steps 20 \
        --repeats 1 --compile --checkpoint-every 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.data.corpora import build_program_corpus
from opencwm.data.documents import documents
from opencwm.data.packing import PackedStream
from opencwm.model import CWM, preset
from opencwm.model.flops import cuda_peak_flops, flops_per_token
from opencwm.tokenizer import Tokenizer
from opencwm.trace.collect import CollectConfig, collect
from opencwm.train.loop import TrainConfig, Trainer, loss_fn, use_bf16


def bare_steps(model: CWM, batches: list[dict], precision: str) -> float:
    """Seconds for the bare steps over pre-made batches."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bf16 = use_bf16(precision, model.device)
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (both measurements)")
    parser.add_argument("--preset-vocab", action="store_true",
                        help="keep the preset's vocabulary (128k for 1b) rather than the trained tokenizer's 2048")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="the pipeline's checkpoint interval in steps (default: half the steps)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="opencwm-train-bench-"))
    build_program_corpus(work / "programs", 400, difficulty=1)
    collect(work / "programs", work / "traces", CollectConfig(progress=False))
    tokenizer = Tokenizer.train([p.read_text() for p in Path(torch.__file__).parent.glob("*.py")][:50],
                                vocab_size=2048)
    docs = {"traces": documents(work / "traces", tokenizer), "direct": documents(work / "traces", tokenizer,
                                                                                  direct=True)}
    config = (preset(args.preset, max_position_embeddings=max(args.seq_len, 1024)) if args.preset_vocab
              else preset(args.preset, **tokenizer.config_fields()))
    checkpoint_every = args.checkpoint_every or max(1, args.steps // 2)
    tokens_per_step = args.batch_size * args.seq_len

    premade_stream = PackedStream(docs, {"traces": 0.8, "direct": 0.2}, seq_len=args.seq_len, seed=1)
    batches = [{k: v.to(device) for k, v in premade_stream.next_batch(args.batch_size).items()}
               for _ in range(args.steps)]
    pipeline, bare, steady, saves = [], [], [], []
    for repeat in range(args.repeats + 1):  # the first round warms up both and is not counted
        with torch.device(device):
            model = CWM(config).init_weights(seed=repeat)
        if args.compile:
            model.compile_blocks()
        seconds = bare_steps(model, batches, args.precision)
        if repeat:
            bare.append(tokens_per_step * args.steps / seconds)
        with torch.device(device):
            model = CWM(config).init_weights(seed=repeat)
        stream = PackedStream(docs, {"traces": 0.8, "direct": 0.2}, seq_len=args.seq_len, seed=repeat)
        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, warmup_steps=5, log_every=5,
                            checkpoint_every=checkpoint_every, precision=args.precision, compile=args.compile)
        trainer = Trainer(model, stream, train, work / f"run-{repeat}")
        start = time.perf_counter()
        last = trainer.train(progress=False)
        seconds = time.perf_counter() - start
        if repeat:
            pipeline.append(tokens_per_step * args.steps / seconds)
            # The trainer's own tokens/s per logging window, leaving out the first (compilation, warm-up), and the
            # final checkpoint: what the run spent after its last report.
            windows = [json.loads(line) for line in (work / f"run-{repeat}" / "metrics.jsonl").open()]
            steady.extend(w["tokens_per_s"] for w in windows[1:])
            saves.append(seconds - last["elapsed_s"])
        del trainer, model
        shutil.rmtree(work / f"run-{repeat}")  # a 1b run's checkpoints are ~15 GB each
        print(f"round {repeat}: bare {bare[-1] if repeat else 0:.0f} tok/s, pipeline "
              f"{pipeline[-1] if repeat else 0:.0f} tok/s", file=sys.stderr)
    bare_median, pipeline_median = statistics.median(bare), statistics.median(pipeline)
    overhead = bare_median / pipeline_median - 1
    figures = (f"`{args.preset}` preset, batch {args.batch_size} x {args.seq_len}, {args.steps} steps per round, "
               f"precision {args.precision} (bf16 autocast: {use_bf16(args.precision, device)}), median of "
               f"{args.repeats}: bare step {bare_median:.0f} tok/s, full pipeline (packing from a trace corpus, "
               f"schedule, clipping, metrics, {-(-args.steps // checkpoint_every)} checkpoints) {pipeline_median:.0f} "
               f"tok/s: overhead {100 * overhead:.1f}% (goal <= 5%); the trainer's own steady tokens/s (median of its "
               f"logging windows after the first) {statistics.median(steady):.0f}, one checkpoint "
               f"{statistics.median(saves):.1f} s")
    if device.type == "cuda" and (peak := cuda_peak_flops()):
        per_token = flops_per_token(config, args.seq_len)
        mfu = {name: f"{tokens * per_token / peak:.1%}" for name, tokens in
               (("bare", bare_median), ("steady", statistics.median(steady)), ("pipeline", pipeline_median))}
        figures += (f"; on {torch.cuda.get_device_name()}, vocabulary {config.vocab_size}: MFU bare {mfu['bare']}, "
                    f"pipeline steady {mfu['steady']} (goal >= 45%), pipeline with compilation and checkpoints "
                    f"{mfu['pipeline']}, peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(figures)
    if not args.no_record:
        append_row("train_bench", "python benchmarks/train_bench.py " + " ".join(sys.argv[1:]), figures)


if __name__ == "__main__":
    main()

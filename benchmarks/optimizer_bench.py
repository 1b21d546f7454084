"""What the optimizer buys at equal data and steps: the ``tiny`` preset trained on execution traces with AdamW
(every parameter) and with Muon (the blocks' matrices, from zero residual projections; AdamW for the rest), then
scored on held-out programs' traces by the speedrun's own metrics, side by side in one run.

    python benchmarks/optimizer_bench.py [--steps 250] [--programs 4000] [--layers 8]

Both runs see the same batches (same corpus, tokenizer, stream seed, initial weights up to the zeroed
projections) and the same schedule (warmup, cosine decay); AdamW at ``--lr``, Muon at ``--muon-lr``. Reported:
teacher-forced next-frame exact match and the share of frame tokens predicted right, on ``--heldout`` programs
from another seed of the same generator, and seconds per run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.data.corpora import build_program_corpus
from opencwm.data.documents import documents, texts
from opencwm.data.packing import PackedStream
from opencwm.eval.trace_eval import TraceEvaluator
from opencwm.model import CWM, preset
from opencwm.tokenizer import Tokenizer
from opencwm.trace.collect import CollectConfig, collect, read_traces
from opencwm.trace.tracer import Limits
from opencwm.train.loop import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--programs", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=30)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="opencwm-optimizer-bench-"))
    limits = Limits(max_frames=400, max_bytes=20_000, max_value_chars=200)  # as in the speedrun
    for name, count, seed in (("train", args.programs, 0), ("heldout", args.heldout, 1_000_003)):
        build_program_corpus(work / f"{name}-programs", count, difficulty=1, seed=seed, hard_share=0.5)
        collect(work / f"{name}-programs", work / f"{name}-traces", CollectConfig(limits=limits, progress=False))
    tokenizer = Tokenizer.train(texts(work / "train-traces", limit=1500), vocab_size=2048)
    docs = {"traces": documents(work / "train-traces", tokenizer),
            "direct": documents(work / "train-traces", tokenizer, direct=True)}
    heldout = [trace for _, trace in read_traces(work / "heldout-traces")]
    config = preset("tiny", **tokenizer.config_fields(), num_hidden_layers=args.layers)

    results = {}
    for optimizer in ("adamw", "muon"):
        torch.manual_seed(0)
        model = CWM(config).init_weights(seed=0, zero_residual=optimizer == "muon")
        stream = PackedStream(docs, {"traces": 0.8, "direct": 0.2}, seq_len=args.seq_len, seed=0)
        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, muon_lr=args.muon_lr,
                            optimizer=optimizer, schedule="cosine", min_lr_ratio=0.05,
                            warmup_steps=min(30, args.steps // 5), checkpoint_every=10 * args.steps, log_every=25)
        start = time.perf_counter()
        last = Trainer(model, stream, train, work / optimizer).train(progress=False)
        seconds = time.perf_counter() - start
        frames, tokens = TraceEvaluator(model.eval(), tokenizer).next_frame_scores(heldout)
        results[optimizer] = (frames, tokens, last["loss"], seconds)
        print(f"{optimizer}: frame exact match {frames.correct}/{frames.total}, frame tokens right "
              f"{tokens.rate:.1%}, final loss {last['loss']:.3f}, {seconds:.0f} s", file=sys.stderr)
    figures = (f"`tiny` preset with {args.layers} layers, {args.steps} steps of {args.batch_size} x {args.seq_len} "
               f"tokens on traces of {args.programs} synthetic programs (80% traces, 20% direct answers), scored on "
               f"{len(heldout)} held-out programs: " + "; ".join(
                   f"{name}: frame tokens right {tokens.rate:.1%}, frame exact match {frames.correct}/{frames.total}"
                   f", final training loss {loss:.3f}, {seconds:.0f} s"
                   for name, (frames, tokens, loss, seconds) in results.items()))
    print(figures)
    if not args.no_record:
        append_row("optimizer_bench", "python benchmarks/optimizer_bench.py " + " ".join(sys.argv[1:]), figures)


if __name__ == "__main__":
    main()

"""Training MFU of a preset on a GPU: bf16, FlexAttention (document + sliding-window block masks), per-block
torch.compile, AdamW; packed 8k-token sequences of several documents, and the trainer's own loss
(``opencwm.train.loop.loss_fn``: ``model(ids, labels=...)``, whose final norm, output layer and cross-entropy are
one compiled function, so the 128k-vocabulary logits are never written out in fp32).

MFU = achieved model FLOPs / the card's peak dense bf16 FLOPs, with model FLOPs as ``opencwm.model.flops`` counts
them (6 x linear parameters + attention over the keys a causal query sees).

    python benchmarks/mfu_bench.py                      # 1b preset, 8192 tokens, on the GPU
    python benchmarks/mfu_bench.py --device cpu --preset nano --seq 256 --steps 3 --no-write   # smoke test

Without CUDA (and without --device cpu) it says so and exits 0: CI machines have no GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import append_row  # noqa: E402

from opencwm.data.packing import next_token_labels  # noqa: E402
from opencwm.model import CWM, preset  # noqa: E402
from opencwm.model.flops import flops_per_token, peak_flops  # noqa: E402
from opencwm.train.loop import loss_fn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--backend", default=None, help="attention backend (default: flex on CUDA, sdpa on CPU)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mfu_bench: no CUDA device here; run it on a GPU machine (nothing measured)")
        return
    device = torch.device(args.device)
    config = preset(args.preset, max_position_embeddings=max(args.seq, 1024))
    with device:
        model = CWM(config)
    model.init_weights(seed=0)
    model.attention_backend = args.backend or ("flex" if device.type == "cuda" else "sdpa")
    if not args.no_compile:
        model.compile_blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
    boundaries = torch.sort(torch.randint(1, args.seq, (args.batch, 3), generator=generator)).values.to(device)
    docs = (torch.arange(args.seq, device=device)[None, :, None] >= boundaries[:, None, :]).sum(-1)
    labels = next_token_labels(ids)
    batch = {"input_ids": ids, "document_ids": docs, "labels": labels}

    def forward_backward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model, batch)
        loss.backward()

    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step():
        forward_backward()
        optimizer_step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm_start = time.perf_counter()
    for _ in range(3):  # compile and warm up
        step()
    sync()
    print(f"compile and 3 warm-up steps: {time.perf_counter() - warm_start:.0f} s", file=sys.stderr)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":  # where the time goes: the block masks, forward + backward, the optimizer step
        from opencwm.model.attention import flex_block_mask

        def masks():
            for window in {config.sliding_window, None}:
                flex_block_mask(args.batch, args.seq, window, docs, device)

        parts = {"masks": (masks, []), "forward+backward": (forward_backward, []), "optimizer": (optimizer_step, [])}
        for _ in range(5):
            for run, seconds in parts.values():
                start = time.perf_counter()
                run()
                sync()
                seconds.append(time.perf_counter() - start)
        print("median ms per step: " + ", ".join(f"{k} {1000 * statistics.median(v):.1f}"
                                                 for k, (_, v) in parts.items())
              + f"; whole step {1000 * statistics.median(times):.1f}", file=sys.stderr)
    tokens_per_second = args.batch * args.seq / statistics.median(times)
    achieved = tokens_per_second * flops_per_token(config, args.seq)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = peak_flops(name)
    palm = flops_per_token(config, args.seq, causal=False)  # PaLM's and torchtitan's count
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    figures = (f"`{args.preset}` preset, batch {args.batch} x {args.seq} tokens, "
               f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, attention "
               f"{model.attention_backend}, {'eager' if args.no_compile else 'per-block compile'}, the trainer's loss "
               f"(labels=), median of "
               f"{args.steps} steps on {name}: {tokens_per_second:.0f} tok/s, {achieved / 1e12:.1f} TFLOP/s")
    if peak:
        figures += (f", MFU {achieved / peak:.1%} (goal >= 45% on H100; with PaLM/torchtitan's FLOP count "
                    f"{tokens_per_second * palm / peak:.1%}), peak memory {memory:.1f} GiB")
    print(figures)
    if not args.no_write and device.type == "cuda":
        append_row("mfu_bench", "python benchmarks/mfu_bench.py " + " ".join(sys.argv[1:]), figures)

if __name__ == "__main__":
    main()

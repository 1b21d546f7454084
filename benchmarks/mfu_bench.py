"""Training MFU of a preset on a GPU: bf16, FlexAttention (document + sliding-window block masks), per-block
torch.compile, AdamW; packed 8k-token sequences of several documents.

MFU = achieved model FLOPs / the card's peak dense bf16 FLOPs. Model FLOPs per token are 6 x (non-embedding
parameters + output head) for the matmuls plus the attention scores: 12 x layers x heads x head_dim x (keys each
query attends to) -- the window on local layers, half the sequence on average on global ones (causal).

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

from opencwm.model import CWM, preset  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_flops(name: str) -> float | None:
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(config, seq: int) -> float:
    matmul_params = config.num_linear_parameters  # attention + MLP + output head (embedding lookups are free)
    attended = sum(min(config.sliding_window, seq) if t == "sliding_attention" else seq / 2
                   for t in config.layer_types)
    attention = 12 * config.num_attention_heads * config.head_dim * attended
    return 6 * matmul_params + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
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
    model.attention_backend = "flex" if device.type == "cuda" else "sdpa"
    if not args.no_compile:
        model.compile_blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
    boundaries = torch.sort(torch.randint(1, args.seq, (args.batch, 3), generator=generator)).values.to(device)
    docs = (torch.arange(args.seq, device=device)[None, :, None] >= boundaries[:, None, :]).sum(-1)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids, document_ids=docs)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # compile and warm up
        step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    tokens_per_second = args.batch * args.seq / statistics.median(times)
    achieved = tokens_per_second * flops_per_token(config, args.seq)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = peak_flops(name)
    mfu = achieved / peak if peak else None
    print(f"{args.preset} at {args.seq} tokens on {name}: {tokens_per_second:.0f} tok/s, "
          f"{achieved / 1e12:.1f} TFLOP/s" + (f", MFU {mfu:.1%}" if mfu is not None else " (peak unknown)"))
    if not args.no_write and device.type == "cuda":
        append_row("mfu_bench", f"python benchmarks/mfu_bench.py --preset {args.preset} --seq {args.seq}",
                   f"{tokens_per_second:.0f} tok/s, {achieved / 1e12:.1f} TFLOP/s, MFU "
                   + (f"{mfu:.1%}" if mfu is not None else "n/a") + " (goal >= 45% on H100)")


if __name__ == "__main__":
    main()

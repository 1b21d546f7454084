"""The CWM transformer against transformers' CwmForCausalLM, same config and weights, in one run (CPU).

1. training step (forward + backward, cross-entropy) tokens/s, in fp32 and under bf16 autocast (how the speedrun
   trains on CPUs with AMX), both models alike, each eager and with ``torch.compile`` per decoder layer (the goal
   compares with transformers as it runs by default, eager; its compiled figure is shown beside it); then the fp32
   step on one long sequence (``--long-length``, 4096 tokens: four times the `tiny` preset's window, where local
   layers attend to a band and transformers' SDPA to the whole masked square);
2. greedy decoding tokens/s at batch 1 (our KV-cache ``generate`` against ``model.generate``);
3. peak memory of a forward pass at 4k, 8k, 16k and 32k tokens with local (sliding-window) layers: it should
   grow linearly, so the 32k/8k ratio is reported (4 is linear, 16 quadratic); each length runs in a fresh
   process and the figure is the growth of its peak RSS (VmHWM) during the forward pass, beside the dense
   reference attention at the lengths it can afford;
4. int8 weight-only quantization: logit error and greedy-token agreement against full precision.

    python benchmarks/model_bench.py [--preset tiny] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import append_row  # noqa: E402

from opencwm.data.packing import next_token_labels  # noqa: E402
from opencwm.model import CWM, preset  # noqa: E402
from opencwm.model.generate import Sampling, generate  # noqa: E402
from opencwm.model.quant import quantize  # noqa: E402


def load_pair(name: str, vocab: int, **overrides):
    import transformers

    config = preset(name, vocab_size=vocab, **overrides)
    ours = CWM(config).init_weights(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa")
    return ours, theirs


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model, ids, hf: bool, bf16: bool = False):
    """Forward + backward of the next-token loss, each library its own way: transformers' ``labels=`` (it shifts
    them), opencwm's ``labels=`` with labels already shifted, as the trainer calls it."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        if hf:
            loss = model(ids, labels=ids).loss
        else:
            labels = next_token_labels(ids)
            loss = model(ids, labels=labels) / labels[:, :-1].numel()
    loss.backward()


def bench_training(ours, theirs, batch: int, length: int, repeats: int, bf16: bool) -> dict:
    ids = torch.randint(0, ours.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    compiled = copy.deepcopy(ours).compile_blocks()  # how opencwm trains (per-block torch.compile)
    theirs_compiled = copy.deepcopy(theirs)
    for layer in theirs_compiled.model.layers:  # the same treatment: each decoder layer compiled
        layer.compile()
    models = {"ours": (ours, False), "ours_compiled": (compiled, False), "transformers": (theirs, True),
              "transformers_compiled": (theirs_compiled, True)}
    for model, hf in models.values():
        model.train()
        training_step(model, ids, hf, bf16)  # compile outside the timing
    results = {name: [] for name in models}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for name, (model, hf) in models.items():
            results[name].append(median_time(lambda m=model, h=hf: training_step(m, ids, h, bf16), 1))
    tokens = batch * length
    return {k: tokens / statistics.median(v) for k, v in results.items()}


def bench_decode(ours, theirs, prompt_length: int, new_tokens: int, repeats: int) -> dict:
    ours.eval()
    theirs.eval()
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_length), generator=torch.Generator().manual_seed(1))

    def run_ours(compile_step: bool = False):
        return generate(ours, prompt.tolist(), Sampling(max_new_tokens=new_tokens, compile=compile_step))[0]

    def run_theirs(model=theirs, **options):
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0, **options)
        return out[0, prompt_length:].tolist()

    # transformers compiled: its forward under torch.compile with a static cache (generate's own compilation runs
    # on CUDA only); the first call compiles, untimed
    compiled = copy.copy(theirs)
    compiled.forward = torch.compile(theirs.forward, dynamic=False)
    reference = run_theirs()
    same = run_ours() == reference and run_ours(True) == reference  # (the second call compiles, untimed)
    same_compiled = run_theirs(compiled, cache_implementation="static") == reference
    runners = {"ours": run_ours, "ours_compiled": lambda: run_ours(True), "transformers": run_theirs,
               "transformers_compiled": lambda: run_theirs(compiled, cache_implementation="static")}
    results = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            results[name].append(median_time(run, 1))
    return {**{k: new_tokens / statistics.median(v) for k, v in results.items()}, "same_tokens": same,
            "same_tokens_compiled": same_compiled}


MEMORY_PROBE = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from opencwm.model import CWM, CwmConfig
torch.set_grad_enabled(False)
# Wide enough that activations, not the interpreter, dominate the peak; every layer local (window 1024).
config = CwmConfig(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                   num_attention_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=1024,
                   layer_types=["sliding_attention"] * 2, max_position_embeddings=65536)
model = CWM(config).eval()
model.attention_backend = {backend!r}
ids = torch.randint(0, 256, (1, {length}))
model(ids[:, :64])
def status(field):  # kB
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (ru_maxrss would include the parent's peak)
before = status("VmRSS:")
model(ids)
print((status("VmHWM:") - before) * 1024)
"""


def bench_memory(lengths: list[int], backend: str) -> dict[int, int]:
    peaks = {}
    for length in lengths:
        code = MEMORY_PROBE.format(repo=str(REPO), length=length, backend=backend)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[length] = int(out.stdout.strip())
    return peaks


def bench_int8(ours, length: int = 256) -> dict:
    ours.eval()
    quantized = quantize(copy.deepcopy(ours), "int8")
    ids = torch.randint(0, ours.config.vocab_size, (4, length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, approx = ours(ids), quantized(ids)
    return {"max_abs_logit_error": float((full - approx).abs().max()),
            "relative_to_logit_std": float((full - approx).abs().max() / full.std()),
            "greedy_token_agreement": float((full.argmax(-1) == approx.argmax(-1)).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--long-length", type=int, default=4096,
                        help="also time the fp32 training step on one sequence this long (0: skip)")
    parser.add_argument("--lengths", default="4096,8192,16384,32768")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="only the decoding comparison (its own row)")
    args = parser.parse_args()
    torch.manual_seed(0)

    ours, theirs = load_pair(args.preset, args.vocab)
    if args.decode_only:
        decode = bench_decode(ours, theirs, 32, 128, args.repeats)
        line = (f"`{args.preset}` preset (vocab {args.vocab}), greedy decode batch 1, 128 new tokens: ours "
                f"{decode['ours']:.1f} (eager) / {decode['ours_compiled']:.1f} (compiled step) vs transformers "
                f"generate {decode['transformers']:.1f} (eager) / {decode['transformers_compiled']:.1f} tok/s (forward "
                f"compiled, static cache) = {decode['ours_compiled'] / decode['transformers']:.2f}x eager, "
                f"{decode['ours_compiled'] / decode['transformers_compiled']:.2f}x compiled; same tokens: "
                f"{decode['same_tokens']} / {decode['same_tokens_compiled']}; median of {args.repeats}")
        print(line)
        if not args.no_write:
            append_row("model_bench", "python benchmarks/model_bench.py --decode-only", line)
        return
    trains = {precision: bench_training(ours, theirs, args.batch, args.length, args.repeats, precision == "bf16")
              for precision in ("fp32", "bf16")}
    for precision, t in trains.items():
        print(f"training step ({precision}): ours {t['ours']:.0f} tok/s eager, {t['ours_compiled']:.0f} tok/s with "
              f"per-block compile; transformers {t['transformers']:.0f} tok/s -> {t['ours'] / t['transformers']:.2f}x "
              f"eager, {t['ours_compiled'] / t['transformers']:.2f}x compiled (goal >= 1.3x); transformers with "
              f"compiled layers {t['transformers_compiled']:.0f} tok/s, ours compiled "
              f"{t['ours_compiled'] / t['transformers_compiled']:.2f}x that")
    long = bench_training(ours, theirs, 1, args.long_length, args.repeats, False) if args.long_length else None
    if long:
        print(f"training step (fp32, 1 x {args.long_length}): ours {long['ours']:.0f} tok/s eager, "
              f"{long['ours_compiled']:.0f} compiled; transformers {long['transformers']:.0f} -> "
              f"{long['ours'] / long['transformers']:.2f}x / {long['ours_compiled'] / long['transformers']:.2f}x")
    decode = bench_decode(ours, theirs, 32, 128, args.repeats)
    print(f"greedy decode (batch 1): ours {decode['ours']:.1f} tok/s eager, {decode['ours_compiled']:.1f} tok/s "
          f"with the compiled step; transformers generate {decode['transformers']:.1f} tok/s -> "
          f"{decode['ours'] / decode['transformers']:.2f}x / {decode['ours_compiled'] / decode['transformers']:.2f}x "
          f"(goal >= 2x); same tokens: {decode['same_tokens']}")
    lengths = [int(x) for x in args.lengths.split(",")]
    memory = bench_memory(lengths, "sdpa")
    dense = bench_memory(lengths[:2], "dense")  # the quadratic reference, at the lengths it can afford
    for length, peak in memory.items():
        reference = f" (dense reference: {dense[length] / 2**20:.0f} MiB)" if length in dense else ""
        print(f"forward peak memory at {length} tokens (local layers): {peak / 2**20:.0f} MiB{reference}")
    ratio = memory[lengths[-1]] / memory[lengths[1]] if len(lengths) > 1 else None
    if ratio:
        print(f"  {lengths[-1]}/{lengths[1]} ratio: {ratio:.2f} (linear: {lengths[-1] / lengths[1]:.0f}, "
              f"quadratic: {(lengths[-1] / lengths[1]) ** 2:.0f})")
    int8 = bench_int8(ours)
    print(f"int8: max logit error {int8['max_abs_logit_error']:.4f} ({int8['relative_to_logit_std']:.3f} of the "
          f"logit std), greedy-token agreement {int8['greedy_token_agreement']:.3f}")

    if not args.no_write:
        figures = (
            f"`{args.preset}` preset (vocab {args.vocab}), batch {args.batch} x {args.length}: training step "
            + "; ".join(f"{p}: {t['ours']:.0f} (eager) / {t['ours_compiled']:.0f} (per-block compile) vs "
                        f"{t['transformers']:.0f} tok/s transformers eager = {t['ours'] / t['transformers']:.2f}x / "
                        f"{t['ours_compiled'] / t['transformers']:.2f}x (transformers with compiled layers "
                        f"{t['transformers_compiled']:.0f} tok/s: ours compiled "
                        f"{t['ours_compiled'] / t['transformers_compiled']:.2f}x)" for p, t in trains.items())
            + " (bf16: autocast on both); "
            + (f"fp32 at 1 x {args.long_length}: {long['ours']:.0f} / {long['ours_compiled']:.0f} vs "
               f"{long['transformers']:.0f} tok/s = {long['ours'] / long['transformers']:.2f}x / "
               f"{long['ours_compiled'] / long['transformers']:.2f}x (transformers with compiled layers "
               f"{long['transformers_compiled']:.0f}); " if long else "")
            + f"greedy decode batch 1 {decode['ours']:.1f} "
            f"(eager) / {decode['ours_compiled']:.1f} (compiled step) vs {decode['transformers']:.1f} tok/s "
            f"transformers generate = {decode['ours'] / decode['transformers']:.2f}x / "
            f"{decode['ours_compiled'] / decode['transformers']:.2f}x (same tokens: {decode['same_tokens']}); "
            "forward peak "
            "memory (local layers, banded sdpa) "
            + ", ".join(f"{k // 1024}k {v / 2**20:.0f} MiB" for k, v in memory.items())
            + " vs dense reference " + ", ".join(f"{k // 1024}k {v / 2**20:.0f} MiB" for k, v in dense.items())
            + (f", {lengths[-1] // 1024}k/{lengths[1] // 1024}k = {ratio:.2f}" if ratio else "")
            + f"; int8 logit error {int8['relative_to_logit_std']:.3f} of std, greedy agreement "
            f"{int8['greedy_token_agreement']:.3f}; median of {args.repeats}"
        )
        append_row("model_bench", "python benchmarks/model_bench.py", figures)
    print(json.dumps({"training": trains, "long_training": long, "decode": decode, "memory": memory,
                      "dense_memory": dense, "int8": int8}))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()

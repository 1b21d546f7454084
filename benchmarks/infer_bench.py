"""Inference speed: the neural debugger's step latency with and without prefix reuse, and ``generate``'s
tokens/s against transformers' ``generate`` on the same weights, in one run (CPU unless --device).

1. Debugger steps along a long real trace (a loop of ``--frames`` frames): at frame 1, 50 and 200 the prompt is
   the source and the real frames before, and a step writes as many tokens as the real frame has. With prefix
   reuse (``LocalCompleter``) the cache already holds the prompt up to the previous frame, as in a session; the
   reference prefills the whole prompt each step. Median of ``--repeats``; the goal is >= 5x at frame 200 and a
   reused step that stays flat as the trace grows.
2. Greedy decoding tokens/s at batch 1 and 8 (``opencwm.model.generate``, eager and with the decoding step
   compiled) against ``transformers``' ``model.generate`` (eager, and its forward compiled with a static cache), the
   same random weights; the tokens must agree.

    python benchmarks/infer_bench.py [--preset tiny] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import append_row
from model_bench import load_pair

from opencwm.infer.local import LocalCompleter
from opencwm.model.generate import Sampling, generate
from opencwm.special_tokens import FRAME_SEP
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import encode_context, encode_frame
from opencwm.trace.program import trace_program

PROGRAM = """def walk(n):
    total = 0
    for i in range(n):
        total += i * i
        if i % 3 == 0:
            total -= 1
    return total
"""
POINTS = (1, 50, 200)


def trace_tokens(frames: int):
    """A tokenizer fitted to the program's trace, the context's tokens and each frame's (with its separator)."""
    trace = trace_program(PROGRAM, f"walk({frames})")
    text = encode_context(trace.source, trace.entry_lineno) + "".join(
        encode_frame(f) + FRAME_SEP for f in trace.frames)
    tokenizer = Tokenizer.train([text] * 4, vocab_size=512)
    context = tokenizer.encode(encode_context(trace.source, trace.entry_lineno), allow_special=True)
    steps = [tokenizer.encode(encode_frame(f) + FRAME_SEP, allow_special=True) for f in trace.frames]
    return tokenizer, context, steps


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_steps(model, frames: int, repeats: int) -> dict:
    tokenizer, context, steps = trace_tokens(frames)
    reusing = LocalCompleter(model, tokenizer)
    fresh = LocalCompleter(model, tokenizer, reuse_prefix=False)
    out = {"prompt_tokens": {}, "new_tokens": {}}
    for point in POINTS:
        before = context + [t for s in steps[: point - 1] for t in s]
        prompt = before + steps[point - 1]
        new = len(steps[point])
        out["prompt_tokens"][point] = len(prompt)
        out["new_tokens"][point] = new
        reuse_times, fresh_times = [], []
        for _ in range(repeats + 1):  # the first round warms up, untimed
            reusing.complete(before, max_tokens=1)  # the session so far: the cache holds the previous prompt
            reuse_times.append(time_once(lambda p=prompt, n=new: reusing.complete(p, max_tokens=n)))
            fresh_times.append(time_once(lambda p=prompt, n=new: fresh.complete(p, max_tokens=n)))
        out[point] = {"reuse_ms": 1e3 * statistics.median(reuse_times[1:]),
                      "prefill_ms": 1e3 * statistics.median(fresh_times[1:])}
        out[point]["speedup"] = out[point]["prefill_ms"] / out[point]["reuse_ms"]
    return out


def bench_generate(ours, theirs, batch: int, prompt_length: int, new_tokens: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, ours.config.vocab_size - 300, (batch, prompt_length), generator=generator)

    def run_ours(compile_step=False):
        return generate(ours, prompts.tolist(), Sampling(max_new_tokens=new_tokens, compile=compile_step))

    compiled = __import__("copy").copy(theirs)
    compiled.forward = torch.compile(theirs.forward, dynamic=False)

    def run_theirs(model=theirs, **options):
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **options)
        return out[:, prompt_length:].tolist()

    reference = run_theirs()
    same = run_ours() == reference and run_ours(True) == reference
    runners = {"ours": run_ours, "ours_compiled": lambda: run_ours(True), "transformers": run_theirs,
               "transformers_compiled": lambda: run_theirs(compiled, cache_implementation="static")}
    try:
        same_compiled = runners["transformers_compiled"]() == reference
    except Exception as exc:
        print(f"transformers compiled: {type(exc).__name__}: {exc}", file=sys.stderr)
        runners.pop("transformers_compiled")
        same_compiled = None
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(time_once(run))
    return {**{name: batch * new_tokens / statistics.median(t) for name, t in times.items()}, "same_tokens": same,
            "same_tokens_transformers_compiled": same_compiled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=110, help="loop iterations of the traced program (2-3 frames "
                        "each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, theirs = load_pair(args.preset, vocab=768, max_position_embeddings=8192)  # frame 200: ~5k tokens
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        steps = bench_steps(ours, args.frames, args.repeats)
    for point in POINTS:
        s = steps[point]
        print(f"debugger step at frame {point} ({steps['prompt_tokens'][point]} prompt tokens, "
              f"{steps['new_tokens'][point]} new): reuse {s['reuse_ms']:.1f} ms, re-prefill {s['prefill_ms']:.1f} ms "
              f"({s['speedup']:.1f}x)")
    decode = {batch: bench_generate(ours, theirs, batch, args.prompt_length, args.new_tokens, args.repeats)
              for batch in (1, 8)}
    for batch, d in decode.items():
        print(f"generate batch {batch}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in d.items()
                                                     if isinstance(v, float)) + f"; same tokens: {d['same_tokens']}")
    if not args.no_write:
        figures = "; ".join(
            f"step at frame {p} ({steps['prompt_tokens'][p]} tok + {steps['new_tokens'][p]} new): reuse "
            f"{steps[p]['reuse_ms']:.1f} ms vs re-prefill "
            f"{steps[p]['prefill_ms']:.1f} ms ({steps[p]['speedup']:.1f}x)" for p in POINTS)
        for batch, d in decode.items():
            figures += (f"; generate batch {batch} tok/s: ours {d['ours']:.0f}, ours compiled "
                        f"{d['ours_compiled']:.0f}, transformers {d['transformers']:.0f}"
                        + (f", transformers compiled {d['transformers_compiled']:.0f}"
                           if "transformers_compiled" in d else ", transformers compiled failed")
                        + f" (same tokens: {d['same_tokens']})")
        append_row("infer_bench", f"python benchmarks/infer_bench.py --preset {args.preset}", figures)


if __name__ == "__main__":
    main()

"""Tokens per trace frame by BPE vocabulary size: would a larger vocabulary make frames shorter (fewer tokens to get
right, more frames in a training sequence)?

Trains the speedrun's byte-level BPE (Llama 3's pre-tokenization, CWM's special tokens) on a speedrun's code and
traces at each size, as the speedrun does, and counts the tokens of every held-out frame and whole trace.

    python benchmarks/vocab_tokens.py --data runs/speedrun/shared [--sizes 2048,4096,8192] [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a speedrun's shared folder (data/)")
    parser.add_argument("--sizes", default="2048,4096,8192", help="vocabulary sizes, comma-separated")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from opencwm.data.documents import texts
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.codec import encode, encode_frame
    from opencwm.trace.collect import read_traces

    data = args.data / "data"
    missing = [str(data / name) for name in ("code", "traces", "heldout-traces") if not (data / name).exists()]
    if missing:
        raise SystemExit(f"vocab_tokens: {args.data} is not a speedrun's shared folder (missing {', '.join(missing)})")
    training = texts(data / "code", limit=400) + texts(data / "traces", limit=1500)  # the speedrun's tokenizer texts
    held = [trace for _, trace in read_traces(data / "heldout-traces") if trace.frames]
    figures = []
    for size in (int(s) for s in args.sizes.split(",")):
        tokenizer = Tokenizer.train(training, size)
        frames = [len(tokenizer.encode(encode_frame(f), allow_special=True)) for t in held for f in t.frames]
        traces = [len(tokenizer.encode(encode(t), allow_special=True)) for t in held]
        figures.append(f"{size}: frame median {statistics.median(frames)}, mean {statistics.mean(frames):.1f}; trace "
                       f"median {statistics.median(traces)}")
        print(figures[-1], flush=True)
    if not args.no_record:
        append_row("vocab_tokens", " ".join(["python benchmarks/vocab_tokens.py", *sys.argv[1:]]),
                   f"tokens of the {len(held)} held-out traces and their frames by vocabulary size: "
                   + "; ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

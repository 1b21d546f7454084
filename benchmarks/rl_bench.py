"""RL step time, split into rollout (sampling), reward (grading in the sandbox pool) and update (forward, backward,
optimizer), without and with ``--overlap`` (the next step's rollouts sampled while the update runs), in one run on
the same policy, items and seeds: equal samples per step.

    python benchmarks/rl_bench.py [--init MODEL_DIR] [--steps 12] [--prompts 8] [--group 8]

Without ``--init`` the policy is the ``tiny`` preset, randomly initialised, with a tokenizer fitted to the items'
prompts (what it samples does not matter for the timing; its response limit does: ``--max-tokens``). Items are
output-prediction items of the synthetic programs (``opencwm rl items``). The wall time per step excludes the
first step (start-up) and is the median over the rest.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row

from opencwm.rl.environments import output_prediction_items
from opencwm.rl.objective import Objective
from opencwm.rl.rollouts import RolloutConfig
from opencwm.rl.run import EnvironmentSpec, RLConfig, run_rl


def policy(folder: Path, items: Path) -> Path:
    """A random ``tiny`` model with a tokenizer fitted to the items' prompts."""
    from opencwm.eval.registry import benchmark_named
    from opencwm.model import CWM, preset
    from opencwm.tokenizer import Tokenizer

    prompts = [p.prompt for p in benchmark_named("cruxeval-o", "assert", str(items)).problems()]
    tokenizer = Tokenizer.train(prompts, vocab_size=1024)
    CWM(preset("tiny", **tokenizer.config_fields())).init_weights(seed=0).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def measure(init: str, items: Path, out: Path, args, overlap: bool) -> dict:
    config = RLConfig(init=init, environments=[EnvironmentSpec("cruxeval-o", str(items), "assert",
                                                                max_tokens=args.max_tokens)],
                      steps=args.steps, prompts=args.prompts, lr=1e-5, checkpoint_every=10_000, seed=0,
                      objective=Objective(),
                      rollout=RolloutConfig(group_size=args.group, skip_equal_groups=False, overlap=overlap,
                                            logged_per_step=0, seed=0))
    run_rl(config, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    walls = [b["elapsed_s"] - a["elapsed_s"] for a, b in itertools.pairwise(rows[1:])]  # (not the first step)
    return {"wall": statistics.median(walls),
            **{part: statistics.median(r[f"seconds_{part}"] for r in rows[1:])
               for part in ("rollout", "reward", "update")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", help="a checkpoint's model directory (default: a random tiny model)")
    parser.add_argument("--steps", type=int, default=12, help="RL steps per mode")
    parser.add_argument("--prompts", type=int, default=8, help="items per step")
    parser.add_argument("--group", type=int, default=8, help="samples per item")
    parser.add_argument("--max-tokens", type=int, default=24, help="response limit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        items = scratch / "items.jsonl"
        items.write_text("".join(json.dumps(i) + "\n" for i in output_prediction_items(200, seed=4321)))
        init = args.init or str(policy(scratch / "policy", items))
        plain = measure(init, items, scratch / "plain", args, overlap=False)
        overlapped = measure(init, items, scratch / "overlap", args, overlap=True)
    speedup = plain["wall"] / overlapped["wall"]
    figures = (f"{args.prompts} items x {args.group} samples per step, up to {args.max_tokens} tokens "
               f"({'policy ' + args.init if args.init else 'random tiny policy'}), median s/step over {args.steps - 2} "
               f"steps: without overlap {plain['wall']:.2f} (rollout {plain['rollout']:.2f}, reward "
               f"{plain['reward']:.2f}, update {plain['update']:.2f}); with overlap {overlapped['wall']:.2f} (rollout "
               f"{overlapped['rollout']:.2f} in the background, reward {overlapped['reward']:.2f}, update "
               f"{overlapped['update']:.2f}): {speedup:.2f}x (goal 1.4x)")
    print(figures)
    append_row("rl_bench", "python benchmarks/rl_bench.py" + (f" --init {args.init}" if args.init else ""), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The speedrun's optional RL stage (``opencwm speedrun --rl-steps N``): GRPO-style RL from the SFT checkpoint on
output prediction of synthetic programs (``opencwm rl items``: outputs from real runs, a generator seed apart from
the held-out programs), rewarded by CruxEval-O's grader, then output prediction of the held-out programs (CruxEval-O's
assert style, greedy, graded by execution) before and after it, each with its interval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

RL_ITEMS = 600
RL_SEED_OFFSET = 424_242  # the RL items' generator seed, apart from the training and held-out programs'


def heldout_items(paths: dict[str, Path], limit: int) -> list[dict]:
    """The held-out programs as output-prediction items (CruxEval's format), each output the value the traced call
    returned."""
    from opencwm.eval.trace_eval import returned
    from opencwm.trace.collect import read_traces

    items = []
    for row, trace in read_traces(paths["heldout-traces"]):
        value, call = returned(trace), row.get("call") or ""
        if value is not None and call.startswith("f(") and call.endswith(")"):
            items.append({"id": row["id"], "code": trace.source, "input": call[2:-1], "output": value})
        if len(items) == limit:
            break
    return items


def output_prediction(model_dir: Path, data: Path, out: Path) -> dict:
    """pass@1 (greedy) of CruxEval-O's assert style on ``data`` and its interval, by the evaluation harness."""
    from opencwm.eval.cruxeval import CruxEval
    from opencwm.eval.harness import Sampling, run_benchmark
    from opencwm.infer.local import LocalCompleter

    summary = run_benchmark(CruxEval("output", "assert", str(data)), LocalCompleter.from_checkpoint(model_dir), out,
                            model=str(model_dir), sampling=Sampling(samples=1, temperature=0.0, max_tokens=32),
                            progress=False)
    return {"pass@1": summary["pass@1"], "interval": summary["pass@1_interval"], "items": summary["items"]}


def rl_stage(config, root: Path, paths: dict[str, Path], sft_model: Path) -> dict:
    """RL from ``sft_model`` for ``config.rl_steps`` steps into ``root/rl``, and the held-out figures before and
    after (resumed, like every stage, when rerun)."""
    from opencwm.rl.environments import output_prediction_items
    from opencwm.rl.objective import Objective
    from opencwm.rl.rollouts import RolloutConfig
    from opencwm.rl.run import EnvironmentSpec, RLConfig, run_rl
    from opencwm.train.loop import latest_checkpoint

    start = time.monotonic()
    folder = root / "rl"
    folder.mkdir(parents=True, exist_ok=True)
    items, heldout = folder / "items.jsonl", folder / "heldout.jsonl"
    if not items.exists():
        made = output_prediction_items(RL_ITEMS, difficulty=config.difficulty, seed=config.seed + RL_SEED_OFFSET)
        items.write_text("".join(json.dumps(item) + "\n" for item in made))
    if not heldout.exists():
        heldout.write_text("".join(json.dumps(item) + "\n" for item in heldout_items(paths, config.eval_traces)))
    before = output_prediction(sft_model, heldout, folder / "eval-before")
    rl = RLConfig(init=str(sft_model), environments=[EnvironmentSpec("cruxeval-o", str(items), "assert",
                                                                     max_tokens=24)],
                  steps=config.rl_steps, prompts=8, lr=1e-4, checkpoint_every=50, seed=config.seed,
                  objective=Objective(scale_rewards="group"), rollout=RolloutConfig(group_size=8, seed=config.seed))
    run_rl(rl, folder / "run", progress=True, device=config.device)
    after = output_prediction(latest_checkpoint(folder / "run") / "model", heldout, folder / "eval-after")
    return {"rl_steps": config.rl_steps, "rl_output_before": before, "rl_output_after": after,
            "rl_seconds": round(time.monotonic() - start, 1)}

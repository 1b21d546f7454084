"""``opencwm rl``: RL from verifiable rewards on a checkpoint, and a look at what a run sampled.

    opencwm rl items --programs 200 --out runs/rl-items.jsonl          # output-prediction items, outputs by execution
    opencwm rl train --init runs/sft/model --env cruxeval-o:assert=runs/rl-items.jsonl --out runs/rl --steps 50
    opencwm rl show runs/rl --limit 5
"""

from __future__ import annotations

import json
import os
import sys

from opencwm.errors import UsageError as CliError
from opencwm.sandbox.cli import add_sandbox_choice

ENV_HELP = ("NAME[:STYLE]=DATA[@WEIGHT]: a benchmark (cruxeval-o, cruxeval-i, humaneval, livecodebench, math500, "
            "aime24, aime25) over training items in its own format, e.g. cruxeval-o:assert=items.jsonl@2, or swe=TASKS "
            "(agentic episodes on a forager task dataset); repeat for a mixture")


def parse_environment(value: str):
    from opencwm.rl.run import EnvironmentSpec

    head, sep, rest = value.partition("=")
    if not sep or not rest:
        raise CliError(f"--env {value}: expected NAME[:STYLE]=DATA[@WEIGHT]")
    name, _, style = head.partition(":")
    data, _, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        return EnvironmentSpec(name, data, style or None, float(weight) if weight else 1.0)
    except ValueError:
        raise CliError(f"--env {value}: the weight is not a number") from None


def cmd_train(args) -> int:
    from opencwm.rl.objective import Objective
    from opencwm.rl.rollouts import RolloutConfig
    from opencwm.rl.run import RLConfig, run_rl

    if args.steps < 1 or args.prompts < 1 or args.lr <= 0:
        raise CliError("--steps and --prompts must be positive, --lr above 0")
    try:
        objective = Objective(args.epsilon_low, args.epsilon_high, args.beta, args.scale_rewards, args.aggregation)
        rollout = RolloutConfig(group_size=args.group, temperature=args.temperature, top_p=args.top_p,
                                skip_equal_groups=not args.keep_equal_groups, overlong=args.overlong,
                                logged_per_step=args.log_rollouts, overlap=args.overlap, server=args.rollout_server,
                                served_model=args.served_model, seed=args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    environments = [parse_environment(value) for value in args.env]
    for spec in environments:
        spec.max_tokens = args.max_tokens
    config = RLConfig(init=args.init, environments=environments, steps=args.steps, prompts=args.prompts, lr=args.lr,
                      warmup_steps=args.warmup, clip=args.clip, checkpoint_every=args.checkpoint_every,
                      kl_metric=not args.no_kl_metric, workers=args.workers, sandbox=args.sandbox, seed=args.seed,
                      objective=objective, rollout=rollout)
    from opencwm.errors import CompleterUnavailable, one_line

    try:
        last = run_rl(config, args.out, progress=not args.quiet)
    except CompleterUnavailable as exc:
        raise CliError(f"--rollout-server: {one_line(str(exc), 300)}; the finished steps are kept in {args.out} "
                       "(run again to go on)") from None
    if os.environ.get("RANK", "0") == "0":  # (under torchrun: rank 0 speaks; its rollouts are the ones logged)
        print(json.dumps(last) if args.json else f"{args.out}: step {last.get('step')}, reward {last.get('reward')}")
    return 0


def cmd_items(args) -> int:
    from opencwm.rl.environments import output_prediction_items

    if args.programs < 1:
        raise CliError("--programs must be positive")
    items = output_prediction_items(args.programs, difficulty=args.difficulty, seed=args.seed)
    with open(args.out, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    print(f"{args.out}: {len(items)} items ({args.programs - len(items)} programs left out: no return value)")
    return 0


def cmd_show(args) -> int:
    from pathlib import Path

    path = Path(args.run) / "rollouts.jsonl"
    if not path.is_file():
        raise CliError(f"{args.run}: no rollouts.jsonl (not an RL run directory, or no step finished yet)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line a kill left half-written
    if args.step is not None:
        rows = [r for r in rows if r.get("step") == args.step]
    for row in rows[-args.limit:]:
        print(f"--- step {row['step']}  {row['env']}  {row['id']}  reward {row['reward']}"
              + (f"  ({row['reason']})" if row.get("reason") else "") + ("  [overlong]" if row.get("overlong") else ""))
        print(row["prompt"][-600:])
        print(f">>> {row['completion']}")
    metrics = Path(args.run) / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().strip().splitlines()
        if lines:
            print(f"last step: {lines[-1]}", file=sys.stderr)
    return 0


def add_parser(areas) -> None:
    rl = areas.add_parser("rl", help="RL from verifiable rewards (GRPO-style) on a checkpoint")
    commands = rl.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="run (or resume) RL from a checkpoint",
                                description="Samples groups of completions per item with the policy, rewards them with "
                                            "each environment's benchmark grader in the sandbox, and updates the "
                                            "policy with a clipped, group-relative policy gradient.")
    train.add_argument("--init", required=True, help="the starting checkpoint's model directory")
    train.add_argument("--env", action="append", required=True, metavar="SPEC", help=ENV_HELP)
    train.add_argument("--out", required=True, help="run directory (checkpoints, metrics, rollouts; resumable)")
    train.add_argument("--steps", type=int, default=50, help="updates")
    train.add_argument("--prompts", type=int, default=8, help="items per step")
    train.add_argument("--group", type=int, default=8, help="completions per item, G")
    train.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, constant")
    train.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    train.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    train.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    train.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    train.add_argument("--max-tokens", type=int, help="response limit")
    train.add_argument("--epsilon-low", type=float, default=0.2, help="ratio clip below 1")
    train.add_argument("--epsilon-high", type=float, default=0.28,
                       help="ratio clip above 1; above --epsilon-low is clip-higher")
    train.add_argument("--beta", type=float, default=0.0, help="KL-to-initial-policy coefficient")
    train.add_argument("--scale-rewards", choices=("none", "group", "batch"), default="none",
                       help="divide advantages by the group's or batch's std")
    train.add_argument("--aggregation", choices=("token", "sequence", "constant"), default="token",
                       help="token losses to the loss: every token alike (DAPO), per-sequence means "
                            "(GRPO), or a constant divisor (Dr. GRPO)")
    train.add_argument("--keep-equal-groups", action="store_true",
                       help="keep groups whose rewards are all equal")
    train.add_argument("--overlong", choices=("mask", "none"), default="mask",
                       help="responses cut at the limit: no loss (mask) or as they are")
    train.add_argument("--overlap", action="store_true",
                       help="sample the next step's rollouts while this step's update runs (one step off-policy, "
                            "corrected by the importance ratio)")
    train.add_argument("--rollout-server", metavar="URL",
                       help="sample single-turn rollouts on an OpenAI-compatible server (vLLM started with "
                            "VLLM_SERVER_DEV_MODE=1 on the --init checkpoint): it reloads the policy's weights after "
                            "every update (default: the local engine)")
    train.add_argument("--served-model", default="cwm", help="the model's name at --rollout-server")
    train.add_argument("--no-kl-metric", action="store_true", help="do not keep the initial policy for the KL metric")
    train.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    train.add_argument("--log-rollouts", type=int, default=4, help="rollouts per step to rollouts.jsonl")
    train.add_argument("--workers", type=int, default=2, help="grading sandboxes")
    add_sandbox_choice(train)
    train.add_argument("--seed", type=int, default=0, help="seed of the item draws and the sampling")
    train.add_argument("--json", action="store_true", help="print the last step's metrics as JSON")
    train.add_argument("--quiet", action="store_true", help="no progress display")
    train.set_defaults(func=cmd_train)

    items = commands.add_parser("items", help="output-prediction items (CruxEval's format) from synthetic programs, "
                                              "their outputs from real runs in the sandbox")
    items.add_argument("--programs", type=int, default=200, help="programs to generate")
    items.add_argument("--difficulty", type=int, default=1, choices=range(1, 6), help="1-5")
    items.add_argument("--seed", type=int, default=1234, help="generator seed")
    items.add_argument("--out", required=True, help="JSONL to write")
    items.set_defaults(func=cmd_items)

    show = commands.add_parser("show", help="rollouts a run sampled, with their rewards")
    show.add_argument("run", help="RL run directory")
    show.add_argument("--limit", type=int, default=5, help="rollouts to show, the latest")
    show.add_argument("--step", type=int, help="only this step's")
    show.set_defaults(func=cmd_show)

"""The speedrun's report: ``report.json`` (stable keys, the plan, every figure of both runs) and ``report.md``
(tables, the plan's scale and what it measured, loss and accuracy plots)."""

from __future__ import annotations

import json
from pathlib import Path

KEYS = ("frame_exact_match", "frame_token_accuracy", "trace_exact_match", "output_exact_match_rollout",
        "output_exact_match_direct", "output_exact_match_chat", "cruxeval_o_direct", "cruxeval_o_rollout",
        "copying_accuracy", "copying_accuracy_vocab", "wall_seconds")


STEP_KEYS = {"pretrain": "pretrain_steps", "midtrain": "midtrain_steps", "sft": "sft_steps"}


def write_report(out: Path, main: dict, ablation: dict | None, total_seconds: float, plan: dict | None = None) -> dict:
    report = {key: main.get(key) for key in KEYS}
    report["wall_seconds"] = round(total_seconds, 1)
    report["plan"] = plan
    report["difficulty"] = main.get("difficulty")
    report["frame_token_accuracy_by_kind"] = main.get("frame_token_accuracy_by_kind")
    report["frame_exact_match_if_right"] = main.get("frame_exact_match_if_right")
    report["frame_exact_match_by_position"] = main.get("frame_exact_match_by_position")
    report["sources"] = main.get("sources")
    report["learning_curve"] = {"with_traces": main.get("curve") or [],
                                **({"no_traces": ablation.get("curve") or []} if ablation is not None else {})}
    if main.get("cruxeval_missing"):
        report["cruxeval_missing"] = main["cruxeval_missing"]
    report.update({key: main[key] for key in ("rl_steps", "rl_output_before", "rl_output_after", "rl_seconds")
                   if key in main})
    if ablation is not None:
        report["no_traces"] = {key: ablation.get(key) for key in KEYS}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _plots(out, main, ablation)

    def fmt(value):
        return "missing" if value is None else (f"{100 * value:.1f}%" if isinstance(value, float) and value <= 1
                                                 else str(value))

    goals = {"frame_exact_match": ">= 90%", "output_exact_match_rollout": ">= 60%", "wall_seconds": "< 1800"}
    rows = ["| figure | with traces | no traces (ablation) | goal |", "|---|---|---|---|"]
    for key in KEYS:
        rows.append(f"| {key} | {fmt(main.get(key))} | {fmt((ablation or {}).get(key))} | {goals.get(key, '')} |")
    difficulty = main.get("difficulty") or {}
    config = main["config"]
    shapes = main.get("stage_shapes") or {stage: (config["seq_len"], config["batch_size"]) for stage in STEP_KEYS}
    million_tokens = sum(config.get(key, 0) * shapes[stage][0] * shapes[stage][1]
                         for stage, key in STEP_KEYS.items()) / 1e6
    lines = [
        "# opencwm CPU speedrun",
        "",
        f"Total wall time: {total_seconds / 60:.1f} min for both runs. Model: `{config['preset']}` preset. "
        f"Steps: pretrain {config['pretrain_steps']}, midtrain {config['midtrain_steps']}, SFT "
        f"{config.get('sft_steps', 0)}, each {_step_shapes(main, config)} "
        f"({million_tokens:.1f}M tokens per run). Training programs: {config['train_programs']} "
        f"(difficulty {config['difficulty']}, {100 * config.get('hard_share', 0):.0f}% one level up); held-out: "
        f"{main.get('traces')} programs from another seed of the same generator, {main.get('frames')} frames "
        f"scored; CruxEval-O on {main.get('cruxeval_items', 0)} items.",
        "",
        *rows,
        "",
    ]
    if plan and plan.get("speed"):
        speed, recipe = plan["speed"], sum(plan["recipe"].values())
        lines += [f"Time budget {plan['time_budget'] / 60:.0f} min. Measured here before training: "
                  f"{speed['tokens_per_second']:.0f} training tokens/s ({speed['step_seconds']:.2f} s per step, "
                  f"{speed['startup_seconds']:.0f} s to compile and start), {1000 * speed['decode_seconds']:.0f} ms "
                  f"per decoding step of a batch; evaluation estimated at {plan['eval_seconds_estimate']:.0f} s per "
                  "run. " + ("The whole recipe fits." if plan["scale"] >= 1 else
                             f"Steps scaled by {plan['scale']:.3f} to fit: {sum(plan['steps'].values())} of the "
                             f"recipe's {recipe} per run (a faster machine trains more of the recipe and scores "
                             "higher)." + (f" The copy drills kept their floor of {plan['steps']['pretrain_steps']} "
                                           "steps (the heads form at a number of steps); the later stages gave up "
                                           "the difference." if plan.get("drill_floor") else ""))
                  + (f" **Below the floor**: only {plan['fitted_scale']:.1%} of the recipe fitted the budget, so "
                     f"the floor of {plan['scale']:.0%} was trained and the run overran its budget."
                     if plan.get("below_floor") else "")
                  + (f" Evaluation cut to fit: {plan['evaluation']['eval_traces']} held-out traces, "
                     f"{plan['evaluation']['cruxeval_limit']} CruxEval items."
                     if plan.get("evaluation", {}).get("eval_traces", config["eval_traces"]) < 100 else "")
                  + f" Machine: {plan.get('machine', 'not recorded')}.", ""]
    if main.get("sources"):
        lines += ["Training sources (with traces), documents / tokens: " + ", ".join(
            f"{name} {size['documents']} / {size['tokens'] / 1e6:.2f}M" for name, size in main["sources"].items())
            + (f" (repo_traces: calls that {config['repo_package']}'s own tests make into it)"
               if "repo_traces" in main["sources"] else ""), ""]
    if ablation is not None:
        best = max(main.get("output_exact_match_rollout") or 0, main.get("output_exact_match_direct") or 0)
        gain = 100 * (best - (ablation.get("output_exact_match_direct") or 0))
        lines += [f"What traces buy: output prediction of the trace-trained model by its better method minus the "
                  f"no-traces model's direct answer = {gain:+.1f} points (goal: >= +15).", ""]
        if main.get("output_exact_match_chat") is not None and ablation.get("output_exact_match_chat") is not None:
            # both models answer the SFT question in chat, so this is the like-for-like figure
            chat = 100 * (main["output_exact_match_chat"] - ablation["output_exact_match_chat"])
            lines += [f"In chat, where both models were fine-tuned to answer: {fmt(main['output_exact_match_chat'])} "
                      f"with traces vs {fmt(ablation['output_exact_match_chat'])} without = {chat:+.1f} points.", ""]
    kinds = main.get("frame_token_accuracy_by_kind")
    if kinds:
        lines += ["Frame tokens right by kind (with traces): " + ", ".join(
            f"{kind} {100 * rate:.1f}%" for kind, rate in kinds.items() if rate is not None)
            + " (name and line are mostly copying from the previous frame and the source; value is execution)", ""]
    if_right = main.get("frame_exact_match_if_right")
    if if_right:
        lines += ["Frame exact match if one kind of token were always right (what limits whole frames): " + ", ".join(
            f"{kind} {100 * rate:.1f}%" for kind, rate in if_right.items() if rate is not None), ""]
    by_position = main.get("frame_exact_match_by_position")
    if by_position:
        def first_token(edge: str) -> int:  # buckets double from the training sequence length
            return 1 if int(edge) <= config["seq_len"] else int(edge) // 2 + 1

        windowed = main.get("window")
        longest = max([config["seq_len"], *(seq_len for seq_len, _ in (main.get("stage_shapes") or {}).values())])
        lines += [f"Frame exact match by where the frame ends in its trace (training sequences are "
                  f"{_step_shapes(main, config)}"
                  + (f"; traces trained and scored in windows of {windowed} tokens, each starting with the source"
                     if windowed else f": positions past {longest} were never trained") + "): "
                  + ", ".join(
                      f"tokens {first_token(edge)}-{edge}: {fmt(right / total)} of {total}"
                      for edge, (right, total) in by_position.items()), ""]
    lines += ["Held-out difficulty (goal: as long as CruxEval's traces, median >= 7 and p95 >= 39 frames): "
              + ", ".join(f"{k} {v}" for k, v in difficulty.items()), ""]
    if main.get("cruxeval_missing"):
        lines += [f"CruxEval-O missing: {main['cruxeval_missing']}", ""]
    if "rl_output_after" in main:
        before, after = main["rl_output_before"], main["rl_output_after"]
        lines += [f"RL stage ({main['rl_steps']} GRPO-style steps from the SFT checkpoint on output prediction of "
                  f"other synthetic programs, {main['rl_seconds'] / 60:.1f} min): held-out output prediction "
                  f"(CruxEval-O's assert style, greedy, {after['items']} programs) {fmt(before['pass@1'])} "
                  f"[{fmt(before['interval'][0])}, {fmt(before['interval'][1])}] before, {fmt(after['pass@1'])} "
                  f"[{fmt(after['interval'][0])}, {fmt(after['interval'][1])}] after (goal: +5 points)", ""]
    curve = main.get("curve") or []
    if curve:
        last, other = curve[-1], ((ablation or {}).get("curve") or [{}])[-1]
        lines += [f"Learning curve ({last['traces']} held-out traces, at the end of pretraining and at every "
                  "midtraining checkpoint; `learning_curve.png`, points in report.json): at "
                  f"{last['tokens'] / 1e6:.2f}M tokens, frame tokens right {fmt(last['frame_token_accuracy'])}, "
                  f"frames exact {fmt(last['frame_exact_match'])}, copying "
                  f"{fmt(last['copying_accuracy'])}, output by direct answer {fmt(last['output_exact_match_direct'])}"
                  + (f" (no traces: {fmt(other.get('frame_token_accuracy'))}, {fmt(other.get('frame_exact_match'))}, "
                     f"{fmt(other.get('copying_accuracy'))}, {fmt(other.get('output_exact_match_direct'))})"
                     if other else "") + ".", ""]
    lines += ["![loss](loss.png)", "", "![accuracy](accuracy.png)", ""]
    if curve:
        lines += ["![learning curve](learning_curve.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return report


def _step_shapes(main: dict, config: dict) -> str:
    """What a training step holds, per stage where the stages differ: "4 x 512 tokens", or "4 x 512 tokens in
    pretrain, 2 x 1024 in midtrain and sft"."""
    shapes = {stage: tuple(shape) for stage, shape in (main.get("stage_shapes") or {}).items()}
    if not shapes:  # a report of a run from before stages had their own lengths
        return f"{config['batch_size']} x {config['seq_len']} tokens"
    if len(set(shapes.values())) == 1:
        seq_len, batch = next(iter(shapes.values()))
        return f"{batch} x {seq_len} tokens"
    by_shape: dict[tuple, list[str]] = {}
    for stage, shape in shapes.items():
        by_shape.setdefault(shape, []).append(stage)
    parts = [f"{b} x {s}" + (" tokens" if i == 0 else "") + " in " + " and ".join(stages)
             for i, ((s, b), stages) in enumerate(by_shape.items())]
    return ", ".join(parts)


def _plots(out: Path, main: dict, ablation: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, result in (("with traces", main), ("no traces", ablation)):
        if result:
            history = result["history"]
            ax.plot(range(len(history)), [h["loss"] for h in history], label=label)
    ax.set_xlabel("logged step (pretrain, midtrain, SFT)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [k for k in KEYS if k != "wall_seconds"]
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [main.get(k) or 0 for k in keys], width=0.4, label="with traces")
    if ablation:
        ax.bar([i + 0.2 for i in x], [ablation.get(k) or 0 for k in keys], width=0.4, label="no traces")
    ax.set_xticks(list(x), [k.replace("_", " ") for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    if not main.get("curve"):
        return
    figures = (("frame_token_accuracy", "frame tokens right"), ("frame_exact_match", "frames exact"),
               ("copying_accuracy", "copying (random trace tokens)"),
               ("output_exact_match_direct", "output exact (direct)"))
    fig, axes = plt.subplots(1, len(figures), figsize=(14, 3.6), sharey=True)
    for ax, (key, title) in zip(axes, figures):
        for label, result in (("with traces", main), ("no traces", ablation)):
            points = (result or {}).get("curve") or []
            if points:
                ax.plot([p["tokens"] / 1e6 for p in points], [p[key] for p in points], marker="o", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training tokens (M)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("held-out subset")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)

"""The speedrun's evaluation: the figures a finished run is scored on, the held-out programs' difficulty, the size
of the learning curve, and an upper bound on the evaluation's time, which the plan counts in the time budget."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

CURVE_TRACES = 20  # held-out traces of the learning curve's points (the first ones: the same at every point)
CURVE_POINTS = 6  # at most: the end of pretraining and midtraining's checkpoints (every max(50, steps / 4) steps)
EVAL_BATCH = 8  # prompts decoded together in evaluation (and in measuring the decoding speed for the budget)


def evaluate(config, model, tokenizer, paths: dict[str, Path], window: int | None = None) -> dict:
    """Every figure of a finished run on the held-out traces and CruxEval (``window``: the model reads traces
    in windows of that many tokens)."""
    from opencwm.eval.copying import copying_accuracy, token_alphabet
    from opencwm.eval.cruxeval import cruxeval_report
    from opencwm.eval.trace_eval import TraceEvaluator, evaluate_traces
    from opencwm.trace.codec import encode
    from opencwm.trace.collect import read_traces

    evaluator = TraceEvaluator(model.eval(), tokenizer, max_trace_tokens=config.max_trace_tokens,
                               batch_size=EVAL_BATCH, window=window)
    results = evaluate_traces(evaluator, read_traces(paths["heldout-traces"]), limit=config.eval_traces,
                              chat=config.sft_steps > 0, first_position_bucket=config.seq_len)
    results.update(cruxeval_report(evaluator, config.cruxeval, config.cruxeval_limit))
    heldout = [encode(trace) for _, trace in itertools.islice(read_traces(paths["heldout-traces"]), config.eval_traces)]
    results["copying_accuracy"] = copying_accuracy(model, ids=token_alphabet(tokenizer, heldout))
    results["copying_accuracy_vocab"] = copying_accuracy(model, low=0, high=min(tokenizer.special_ids.values()))
    return results


def difficulty_profile(paths: dict[str, Path], limit: int) -> dict:
    """How hard the held-out programs are: trace lengths and the share with loops, helpers, exceptions."""
    from opencwm.shards import read_rows
    from opencwm.trace.collect import read_traces

    features = {r["id"]: json.loads(r["features"]) for r in read_rows(paths["heldout-programs"])}
    lengths, flags = [], {"loops": 0, "helper_calls": 0, "exceptions": 0, "branches": 0}
    for row, trace in list(read_traces(paths["heldout-traces"]))[:limit]:
        lengths.append(len(trace.frames))
        for key in flags:
            flags[key] += bool(features.get(row["id"], {}).get(key))
    lengths.sort()
    n = max(1, len(lengths))
    return {"programs": len(lengths), "frames_median": statistics.median(lengths) if lengths else 0,
            "frames_p95": lengths[int(0.95 * (len(lengths) - 1))] if lengths else 0,
            **{f"share_{k}": round(v / n, 3) for k, v in flags.items()}}


def evaluation_seconds(config, paths: dict[str, Path], tokenizer, speed) -> float:
    """An upper bound on one run's evaluation time: its greedy decoding steps (rollouts of the held-out traces,
    CruxEval's taken as long, short direct and chat answers; each batch runs to its longest budget) at the
    measured decoding speed (averaged over 256 steps of a growing context, as rollouts grow theirs), plus the
    teacher-forced passes over the held-out traces at training speed. On an AVX2-only 2-core machine: about 340 s
    estimated, 284 s taken (the model stops some rollouts early)."""
    from opencwm.eval.trace_eval import new_token_limit
    from opencwm.trace.codec import encode
    from opencwm.trace.collect import read_traces

    scored = (trace for _, trace in read_traces(paths["heldout-traces"]) if trace.status == "ok" and trace.frames)
    held = [len(tokenizer.encode(encode(trace), allow_special=True))
            for trace in itertools.islice(scored, max(config.eval_traces, CURVE_TRACES))]
    lengths = sorted(held[:config.eval_traces])
    budgets = [new_token_limit(n, config.max_trace_tokens) for n in lengths]
    rollout = sum(max(budgets[i:i + EVAL_BATCH]) for i in range(0, len(budgets), EVAL_BATCH))
    cruxeval = config.cruxeval_limit if config.cruxeval else 0
    rollout *= 1 + cruxeval / max(1, len(budgets))
    answers = 3 * -(-(len(budgets) + cruxeval) // EVAL_BATCH) * 48  # direct, chat and CruxEval's direct answers
    forward = sum(min(n, config.max_trace_tokens) for n in lengths) / speed.tokens_per_second
    # the learning curve: at most CURVE_POINTS points, each a teacher-forced pass over its traces and their direct
    # answers (the trace lengths are the whole traces': next-frame scoring does not cut them)
    curve_lengths = held[:CURVE_TRACES]
    curve = CURVE_POINTS * (sum(curve_lengths) / speed.tokens_per_second
                            + -(-len(curve_lengths) // EVAL_BATCH) * 48 * speed.decode_seconds + 2)
    return (rollout + answers) * speed.decode_seconds + forward + curve + 10

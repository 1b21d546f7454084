"""CruxEval-O (Gu et al., 2024: predict ``f(input)``'s output from ``f``'s source): the items from a local JSONL or
the public dataset, scored by direct answer and by trace rollout with the world-modeling evaluator."""

from __future__ import annotations

from opencwm.data.prompts import rollout_prompt
from opencwm.eval.trace_eval import Score, TraceEvaluator, returned, same_value
from opencwm.trace.codec import encode
from opencwm.trace.record import Trace


def load_cruxeval(source: str) -> tuple[list[dict] | None, str | None]:
    """CruxEval items from a local JSONL path, or from the public Hugging Face dataset when ``source`` is "hf" and
    the network allows. Returns (items, None) or (None, why they are missing)."""
    import json
    from pathlib import Path

    if source != "hf":
        path = Path(source)
        if not path.exists():
            return None, f"{source}: no such file"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()], None
    try:
        from datasets import load_dataset
    except ImportError:
        return None, "CruxEval from Hugging Face needs the datasets package: pip install 'opencwm[hf]'"
    try:
        return [dict(row) for row in load_dataset("cruxeval-org/cruxeval", split="test")], None
    except Exception as exc:  # no network, no hub: say why
        return None, f"CruxEval could not be loaded from Hugging Face ({type(exc).__name__}: {str(exc)[:120]})"


def cruxeval_scores(evaluator: TraceEvaluator, items: list[dict]) -> dict:
    """CruxEval-O by direct answer and by trace rollout (the model traces ``f(input)`` from the source and the
    call frame holding the input; an item whose call cannot start counts as wrong). The real trace, made in the
    sandbox, only bounds how long a rollout may run (twice its length); the model sees its call frame alone."""
    direct = evaluator.direct([(item["code"], f"f({item['input']})", item["output"]) for item in items])
    rollout = Score()
    real = real_traces([(item["code"], f"f({item['input']})") for item in items])
    started = [trace for trace in real if trace is not None]
    contexts = [Trace(source=t.source, entry_lineno=t.entry_lineno, frames=t.frames[:1]) for t in started]
    truths = [encode(t)[len(rollout_prompt(t)):] for t in started]
    predictions = iter(evaluator.rollout_texts(contexts, truths))
    for item, trace in zip(items, real):
        rollout.add(trace is not None and same_value(returned(next(predictions)[1]), item["output"]))
    return {"cruxeval_o_direct": direct.rate, "cruxeval_o_rollout": rollout.rate, "cruxeval_items": direct.total}


def real_traces(programs: list[tuple[str, str]]) -> list[Trace | None]:
    """The real trace of each (source, call), made in the sandbox; None where the call cannot even start."""
    from opencwm.trace.sandboxed import sandboxed_traces

    return [trace if trace.frames else None for trace in sandboxed_traces(programs)]


def cruxeval_report(evaluator: TraceEvaluator, source: str | None, limit: int | None = None) -> dict:
    """CruxEval-O figures, or None for both with ``cruxeval_missing`` saying why they could not be measured."""
    items, why = load_cruxeval(source) if source else (None, "not requested")
    if items is None:
        return {"cruxeval_o_direct": None, "cruxeval_o_rollout": None, "cruxeval_missing": why}
    return cruxeval_scores(evaluator, items[:limit])

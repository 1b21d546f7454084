"""Evaluation of world modeling: how well a model predicts execution, in CWM's trace format.

- ``next_frame``: teacher-forced; the prompt is the source and the true frames so far, the model writes the next
  frame (up to ``<|frame_sep|>``); exact match of the frame's text.
- ``rollout``: the model writes the whole trace from the source alone; exact match of all frames, and output
  prediction: the entry function's return value from the predicted trace, compared by value.
- ``direct``: output prediction without a trace, as a completion of ``assert CALL == `` after the source (the
  CruxEval-O style prompt); compared by value.

Every figure comes with its count, so callers can tell 0/0 from 0/100.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from opencwm.model.generate import Sampling, generate
from opencwm.special_tokens import BEGIN_OF_TEXT, END_OF_TEXT, FRAME_SEP
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import TraceDecodeError, decode, encode_context, encode_frame
from opencwm.trace.record import RETURN, Trace


@dataclass
class Score:
    correct: int = 0
    total: int = 0

    @property
    def rate(self) -> float | None:
        return self.correct / self.total if self.total else None

    def add(self, ok: bool) -> None:
        self.correct += bool(ok)
        self.total += 1


def same_value(predicted: str | None, expected: str | None) -> bool:
    """Compare two reprs by value when both are literals, else as text."""
    if predicted is None or expected is None:
        return False
    try:
        return ast.literal_eval(predicted) == ast.literal_eval(expected)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return predicted.strip() == expected.strip()


def direct_prompt(source: str, call: str) -> str:
    return f"{BEGIN_OF_TEXT}{source.rstrip()}\n\nassert {call} == "


def direct_target(value_repr: str) -> str:
    return f"{value_repr}\n"


class TraceEvaluator:
    def __init__(self, model, tokenizer: Tokenizer, *, max_frame_tokens: int = 256, max_trace_tokens: int = 2048,
                 batch_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.max_frame_tokens, self.max_trace_tokens, self.batch_size = max_frame_tokens, max_trace_tokens, batch_size
        self.frame_sep, self.end = tokenizer.token_id(FRAME_SEP), tokenizer.token_id(END_OF_TEXT)

    def _generate(self, prompts: list[str], max_new: int, stops: tuple[int, ...]) -> list[str]:
        outputs = []
        limit = self.model.config.max_position_embeddings
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.tokenizer.encode(p, allow_special=True) for p in prompts[start : start + self.batch_size]]
            chunk = [ids[-(limit - max_new) :] for ids in chunk]  # keep the newest context if too long
            new = generate(self.model, chunk, Sampling(max_new_tokens=max_new, stop_tokens=stops))
            outputs += [self.tokenizer.decode(ids) for ids in new]
        return outputs

    def next_frame(self, traces: list[Trace], max_frames_per_trace: int | None = None) -> Score:
        prompts, expected = [], []
        for trace in traces:
            text = encode_context(trace.source, trace.entry_lineno)
            for frame in trace.frames[:max_frames_per_trace]:
                prompts.append(text)
                expected.append(encode_frame(frame))
                text += encode_frame(frame) + FRAME_SEP
        score = Score()
        for got, want in zip(self._generate(prompts, self.max_frame_tokens, (self.frame_sep, self.end)), expected):
            score.add(got.removesuffix(FRAME_SEP) == want)
        return score

    def rollout(self, traces: list[Trace]) -> tuple[Score, Score]:
        """(whole-trace exact match, output prediction by rollout)."""
        prompts = [encode_context(t.source, t.entry_lineno) for t in traces]
        generated = self._generate(prompts, self.max_trace_tokens, (self.end,))
        whole, output = Score(), Score()
        for trace, prompt, text in zip(traces, prompts, generated):
            try:
                predicted = decode(prompt + text)
            except TraceDecodeError:
                predicted = None
            truth = [(f.event, f.line, f.locals, f.value) for f in trace.frames]
            mine = [(f.event, f.line, f.locals, f.value) for f in predicted.frames] if predicted else None
            whole.add(mine == truth)
            value = predicted.frames[-1].value if predicted and predicted.frames and \
                predicted.frames[-1].event == RETURN else None
            output.add(same_value(value, trace.return_value))
        return whole, output

    def direct(self, programs: list[tuple[str, str, str]]) -> Score:
        """``programs``: (source, call, expected repr of the result)."""
        prompts = [direct_prompt(source, call) for source, call, _ in programs]
        newline = self.tokenizer.encode("\n")
        stops = (self.end, *newline) if len(newline) == 1 else (self.end,)
        score = Score()
        for (_, _, expected), got in zip(programs, self._generate(prompts, self.max_frame_tokens, stops)):
            score.add(same_value(got.split("\n")[0], expected))
        return score


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

        return [dict(row) for row in load_dataset("cruxeval-org/cruxeval", split="test")], None
    except Exception as exc:  # no datasets package, no network, no hub: say why
        return None, f"CruxEval could not be loaded from Hugging Face ({type(exc).__name__}: {str(exc)[:120]})"


def cruxeval_scores(evaluator: TraceEvaluator, items: list[dict]) -> dict:
    """CruxEval-O by direct answer and by trace rollout (the model traces ``f(input)`` from the source alone)."""
    from opencwm.trace.source import SourceMap

    direct = evaluator.direct([(item["code"], f"f({item['input']})", item["output"]) for item in items])
    contexts = []
    for item in items:
        source_map = SourceMap(item["code"])
        entry = next((line for line, text in enumerate(source_map.lines, 1) if text.startswith("def f(")), 1)
        contexts.append(Trace(source=item["code"], entry_lineno=entry))
    # the rollout needs no true frames: score only its output against CruxEval's
    prompts = [encode_context(t.source, t.entry_lineno) for t in contexts]
    generated = evaluator._generate(prompts, evaluator.max_trace_tokens, (evaluator.end,))
    rollout = Score()
    for item, prompt, text in zip(items, prompts, generated):
        try:
            predicted = decode(prompt + text)
            value = predicted.frames[-1].value if predicted.frames and predicted.frames[-1].event == RETURN else None
        except TraceDecodeError:
            value = None
        rollout.add(same_value(value, item["output"]))
    return {"cruxeval_o_direct": direct.rate, "cruxeval_o_rollout": rollout.rate, "cruxeval_items": direct.total}


def cruxeval_report(evaluator: TraceEvaluator, source: str | None, limit: int | None = None) -> dict:
    """CruxEval-O figures, or None for both with ``cruxeval_missing`` saying why they could not be measured."""
    items, why = load_cruxeval(source) if source else (None, "not requested")
    if items is None:
        return {"cruxeval_o_direct": None, "cruxeval_o_rollout": None, "cruxeval_missing": why}
    return cruxeval_scores(evaluator, items[:limit])


def evaluate_traces(evaluator: TraceEvaluator, rows_and_traces, *, limit: int | None = None,
                    max_frames_per_trace: int | None = None) -> dict:
    """All world-modeling figures on held-out traces (rows from ``opencwm.trace.collect.read_traces``)."""
    chosen = [(row, trace) for row, trace in rows_and_traces if trace.status == "ok" and trace.frames][:limit]
    traces = [trace for _, trace in chosen]
    frames = evaluator.next_frame(traces, max_frames_per_trace)
    whole, output = evaluator.rollout(traces)
    direct = evaluator.direct([(t.source, row["call"], t.return_value) for row, t in chosen if row.get("call")])
    return {"frame_exact_match": frames.rate, "frames": frames.total, "trace_exact_match": whole.rate,
            "output_exact_match_rollout": output.rate, "output_exact_match_direct": direct.rate,
            "traces": len(traces)}

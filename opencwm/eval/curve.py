"""Learning-curve points: cheap figures on a fixed subset of held-out traces, computed at checkpoints during
training, so a report can show how the world-modeling figures move with training tokens (and how far more compute
would take them).

A point holds the teacher-forced next-frame exact match and frame-token accuracy on the subset, the random-token
copying accuracy over the token ids the subset uses (``copying``), and the output exact match by direct answer on
the subset's programs (one short greedy answer each: the cheapest output figure; rollouts cost tens of decoding
steps per frame).
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.eval.copying import copying_accuracy, token_alphabet
from opencwm.eval.trace_eval import TraceEvaluator, held_out_programs
from opencwm.trace.codec import encode


class LearningCurve:
    """Appends a point per call to ``path`` (JSON Lines; a resumed run keeps the points already there)."""

    def __init__(self, path: str | Path, tokenizer, rows_and_traces, *, size: int = 20, batch_size: int = 8,
                 window: int | None = None):
        chosen = [(row, trace) for row, trace in rows_and_traces if trace.status == "ok" and trace.frames][:size]
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.traces = [trace for _, trace in chosen]
        self.programs = held_out_programs(chosen)
        self.batch_size, self.window = batch_size, window
        self.alphabet = token_alphabet(tokenizer, [encode(trace) for trace in self.traces])

    def point(self, model, **where) -> dict:
        """The figures of ``model`` (an uncompiled copy of the weights being trained: evaluation shapes would
        recompile compiled blocks), with ``where`` (e.g. stage, step, tokens) in front."""
        import torch

        evaluator = TraceEvaluator(model.eval(), self.tokenizer, batch_size=self.batch_size, window=self.window)
        with torch.no_grad():
            frames, tokens = evaluator.next_frame_scores(self.traces)
            direct = evaluator.direct(self.programs)
            copying = copying_accuracy(model, ids=self.alphabet) if self.alphabet else 0.0
        return {**where, "frame_exact_match": frames.rate, "frame_token_accuracy": tokens.rate,
                "copying_accuracy": copying, "output_exact_match_direct": direct.rate, "traces": len(self.traces)}

    def record(self, model, **where) -> dict:
        point = self.point(model, **where)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        return point


def read_curve(path: str | Path) -> list[dict]:
    """The points of a curve file, in order, the last one kept for a step recorded twice (a resumed run)."""
    path = Path(path)
    if not path.exists():
        return []
    points = {}
    for line in path.read_text().splitlines():
        point = json.loads(line)
        points[(point.get("stage"), point.get("step"))] = point
    return sorted(points.values(), key=lambda p: p.get("tokens", 0))

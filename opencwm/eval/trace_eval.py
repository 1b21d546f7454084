"""Evaluation of world modeling: how well a model predicts execution, in CWM's trace format.

- ``next_frame``: teacher-forced; the prompt is the source and the true frames so far, the model writes the next
  frame (up to ``<|frame_sep|>``); exact match of the frame's text, and, graded, the share of the frames'
  tokens predicted right, overall and by what a token is (``FRAME_TOKEN_KINDS``: the event, variable names,
  ``".."`` for an unchanged value, a new value, the next source line, the returned or raised value, format), so one sees
  whether a model fails at copying names and lines or at executing them. The entry call frame is the input (its
  arguments), not a prediction, so scoring starts at the second frame.
- ``rollout``: the model writes the whole trace from the source and the entry call frame (the input, as in CWM's
  neural debugger, where the arguments are given or sampled); exact match of all frames, and output prediction:
  the entry function's return value from the predicted trace, compared by value.
- ``direct``: output prediction without a trace, as a completion of ``assert CALL == `` after the source (the
  CruxEval-O style prompt); compared by value.

Every figure comes with its count, so callers can tell 0/0 from 0/100.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from opencwm.chat import encode_messages
from opencwm.data.prompts import direct_prompt, rollout_prompt
from opencwm.model.generate import Sampling, generate
from opencwm.special_tokens import ACTION_SEP, ARG_SEP, END_OF_TEXT, FRAME_SEP
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import TraceDecodeError, decode, encode, encode_context, encode_frame
from opencwm.trace.record import CALL, LINE, RETURN, UNCHANGED, Frame, Trace
from opencwm.trace.values import same_value

FRAME_TOKEN_KINDS = ("event", "name", "unchanged", "value", "line", "returned", "format")


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


def frame_char_kinds(frame: Frame) -> list[str]:
    """The kind (``FRAME_TOKEN_KINDS``) of every character of ``encode_frame(frame)``."""
    text = encode_frame(frame)
    event = text[: text.index(">") + 1]  # the event's special token
    if frame.event in (CALL, LINE):
        pairs = [[("format", '"'), ("name", json.dumps(name)[1:-1]), ("format", '": "'),
                  ("unchanged" if value == UNCHANGED else "value", json.dumps(value)[1:-1]), ("format", '"')]
                 for name, value in frame.locals.items()]
        body = [("format", "{"), *[piece for i, pair in enumerate(pairs)
                                   for piece in ([("format", ", ")] if i else []) + pair], ("format", "}")]
        rest = text[len(event) + sum(len(t) for _, t in body):]
        pieces = [("event", event), *body, ("format", ACTION_SEP), ("line", rest[len(ACTION_SEP):])]
    else:
        action_end = text.index(ARG_SEP)
        pieces = [("event", event), ("format", ACTION_SEP), ("line", text[len(event) + len(ACTION_SEP):action_end]),
                  ("format", ARG_SEP), ("returned", text[action_end + len(ARG_SEP):])]
    kinds = [kind for kind, piece in pieces for _ in piece]
    if "".join(piece for _, piece in pieces) != text:  # a layout this function does not know: no breakdown
        return ["format"] * len(text)
    return kinds


def token_kinds(tokenizer: Tokenizer, frame: Frame, ids: list[int]) -> list[str]:
    """The kind of each token of a frame's ``ids``: that of its first character that is not format (a token
    such as ``' "x'`` is a name), else format."""
    chars = frame_char_kinds(frame)
    out, start = [], 0
    for end in range(1, len(ids) + 1):
        stop = len(tokenizer.decode(ids[:end]))
        out.append(next((k for k in chars[start:stop] if k != "format"), "format"))
        start = stop
    return out


def position_bucket(end: int, first: int = 512) -> int:
    """The bucket of a frame that ends at token ``end`` of its trace: the least of ``first``, ``2 * first``,
    ``4 * first``, ... that is at least ``end`` (a frame in bucket 1024 with first 512 ends at token 513-1024)."""
    edge = first
    while edge < end:
        edge *= 2
    return edge


def returned(trace: Trace | None) -> str | None:
    """The entry function's return value in a (predicted) trace, if it ends with a return frame."""
    if trace is None or not trace.frames or trace.frames[-1].event != RETURN:
        return None
    return trace.frames[-1].value


def new_token_limit(true_tokens: int, cap: int) -> int:
    """How many tokens an answer may take: one longer than twice the true one (plus slack) cannot match it
    exactly, so generation stops there instead of at ``cap`` (which keeps evaluating an untrained model cheap)."""
    return min(cap, 2 * true_tokens + 16)


class TraceEvaluator:
    def __init__(self, model, tokenizer: Tokenizer, *, max_frame_tokens: int = 256, max_trace_tokens: int = 2048,
                 batch_size: int = 8, progress: bool = False, window: int | None = None):
        """``window``: a model trained on traces cut into windows of this many tokens (``trace_windows``) is shown
        traces cut the same way when scoring next frames (None: each whole trace in one pass)."""
        self.model, self.tokenizer, self.progress, self.window = model, tokenizer, progress, window
        self.max_frame_tokens, self.max_trace_tokens, self.batch_size = max_frame_tokens, max_trace_tokens, batch_size
        self.frame_sep, self.end = tokenizer.token_id(FRAME_SEP), tokenizer.token_id(END_OF_TEXT)

    def _steps(self, items, desc: str, total: int | None = None):
        """``items``, counted on a progress bar on stderr when the evaluator shows progress."""
        if not self.progress:
            return items
        import sys

        from tqdm import tqdm

        return tqdm(items, desc=desc, total=total, unit="item", file=sys.stderr, leave=False, dynamic_ncols=True)

    def _budget(self, truths: list[str], cap: int) -> list[int]:
        return [new_token_limit(len(self.tokenizer.encode(t, allow_special=True)), cap) for t in truths]

    def _generate(self, prompts: list[str], max_new: int | list[int], stops: tuple[int, ...],
                  desc: str = "generating") -> list[str]:
        """Greedy completions; ``max_new`` is one limit or one per prompt (prompts with similar limits are
        batched together)."""
        limits = max_new if isinstance(max_new, list) else [max_new] * len(prompts)
        outputs: list[str] = [""] * len(prompts)
        context = self.model.config.max_position_embeddings
        order = sorted(range(len(prompts)), key=lambda i: limits[i])
        for start in self._steps(range(0, len(order), self.batch_size), f"{desc} ({len(prompts)} prompts)"):
            indices = order[start : start + self.batch_size]
            most = max(limits[i] for i in indices)
            chunk = [self.tokenizer.encode(prompts[i], allow_special=True)[-(context - most) :] for i in indices]
            new = generate(self.model, chunk, Sampling(max_new_tokens=most, stop_tokens=stops))
            for i, ids in zip(indices, new):
                outputs[i] = self.tokenizer.decode(ids[: limits[i]])
        return outputs

    def next_frame(self, traces: list[Trace], max_frames_per_trace: int | None = None) -> Score:
        """Teacher-forced next-frame exact match in one forward pass per trace: greedy decoding from the true
        prefix writes the true frame exactly when, at every token of the frame and its closing
        ``<|frame_sep|>``, the most likely token is the true one (the frame's text is tokenized as in training:
        special tokens bound every piece)."""
        return self.next_frame_scores(traces, max_frames_per_trace)[0]

    def next_frame_scores(self, traces: list[Trace], max_frames_per_trace: int | None = None,
                          by_kind: dict[str, Score] | None = None, all_but: dict[str, Score] | None = None,
                          by_position: dict[int, Score] | None = None,
                          first_position_bucket: int = 512) -> tuple[Score, Score]:
        """(next-frame exact match, token accuracy within those frames): the second is the graded figure, the
        share of the frames' tokens whose most likely prediction from the true prefix is right; ``by_kind``
        (a dict) receives the same per token kind (``FRAME_TOKEN_KINDS``). ``all_but`` (a dict) receives, per
        kind, the share of frames whose tokens of every other kind are all right: the frame exact match the
        model would get if that kind were always right (exact, since every prediction sees the true prefix).
        ``by_position`` (a dict) receives the frame exact match by where in its trace a frame ends, keyed by
        ``position_bucket`` (``first_position_bucket``, e.g. the training sequence length, then doubling): a
        model trained on shorter sequences than its traces meets positions and distances it never learned, unless
        the evaluator cuts traces into its training windows (``window``)."""
        import torch

        score, tokens = Score(), Score()
        for trace in self._steps(traces, "next-frame scores (traces)"):
            for ids, spans in self._scored_passes(trace, max_frames_per_trace, self.window):
                with torch.no_grad():
                    logits = self.model(torch.tensor([ids[: spans[-1][1]]], device=self.model.device))[0]
                predicted = logits.argmax(-1).tolist()
                for start, end, frame, at in spans:
                    right = [p == t for p, t in zip(predicted[start - 1 : end - 1], ids[start:end])]
                    self._count(self.tokenizer, right, frame, ids[start : end - 1], at, score, tokens, by_kind,
                                all_but, by_position, first_position_bucket)
        return score, tokens

    def _scored_passes(self, trace: Trace, max_frames: int | None, window: int | None):
        """The forward passes that score ``trace``'s frames (the call frame is the input): ``(ids, spans)`` with a
        span ``(start, end, frame, end in the whole trace)`` per scored frame. One pass over the whole trace (frames
        past the model's positions are not scored), or with ``window`` (a model trained on ``trace_windows``) one
        per window of the training cut, each starting with the source (so every frame is scored)."""
        from opencwm.data.documents import frame_windows

        context = self.tokenizer.encode(encode_context(trace.source, trace.entry_lineno), allow_special=True)
        frames = [[*self.tokenizer.encode(encode_frame(frame), allow_special=True), self.frame_sep]
                  for frame in trace.frames[:max_frames]]
        ends = list(itertools.accumulate([len(context), *map(len, frames)]))[1:]  # each frame's end in the trace
        limit = self.model.config.max_position_embeddings  # a window may pass its length by one long frame
        cuts = frame_windows(len(context), [len(f) for f in frames], window) if window else [(0, len(frames))]
        for first, end in cuts:
            ids = context + (frames[first - 1] if first else [])
            spans = []
            for index in range(first, end):
                if index > 0:
                    spans.append((len(ids), len(ids) + len(frames[index]), trace.frames[index], ends[index]))
                ids.extend(frames[index])
            spans = [span for span in spans if span[1] <= limit]
            if spans:
                yield ids, spans

    @staticmethod
    def _count(tokenizer, right: list[bool], frame: Frame, ids: list[int], at: int, score: Score, tokens: Score,
               by_kind, all_but, by_position, first_position_bucket: int) -> None:
        """Adds one scored frame to the figures: ``right`` per token of the frame and its closing separator,
        ``ids`` the frame's tokens, ``at`` where it ends in its trace."""
        score.add(all(right))
        if by_position is not None:
            by_position.setdefault(position_bucket(at, first_position_bucket), Score()).add(all(right))
        tokens.correct += sum(right)
        tokens.total += len(right)
        if by_kind is None and all_but is None:
            return
        kinds = [*token_kinds(tokenizer, frame, ids), "format"]  # the closing <|frame_sep|> is format
        if by_kind is not None:
            for kind, ok in zip(kinds, right):
                by_kind.setdefault(kind, Score()).add(ok)
        if all_but is not None:
            wrong = {kind for kind, ok in zip(kinds, right) if not ok}
            for kind in FRAME_TOKEN_KINDS:
                all_but.setdefault(kind, Score()).add(wrong <= {kind})

    def next_frame_by_generation(self, traces: list[Trace], max_frames_per_trace: int | None = None) -> Score:
        """The same figure by generating each frame (slow: one generation per frame); kept as the reference
        that ``next_frame`` is checked against."""
        prompts, expected = [], []
        for trace in traces:
            text = encode_context(trace.source, trace.entry_lineno)
            for index, frame in enumerate(trace.frames[:max_frames_per_trace]):
                if index > 0:  # the call frame is the input
                    prompts.append(text)
                    expected.append(encode_frame(frame))
                text += encode_frame(frame) + FRAME_SEP
        score = Score()
        limits = self._budget(expected, self.max_frame_tokens)
        for got, want in zip(self._generate(prompts, limits, (self.frame_sep, self.end)), expected):
            score.add(got.removesuffix(FRAME_SEP) == want)
        return score

    def rollout_texts(self, contexts: list[Trace], truths: list[str] | None = None) -> list[tuple[str, Trace | None]]:
        """Roll out each trace from its source and entry call frame (``contexts[i].frames[0]``): the generated
        text and the decoded trace (None when the text is not a trace). With the true continuations (``truths``),
        a rollout stops at twice the true length."""
        prompts = [rollout_prompt(t) for t in contexts]
        limits = self._budget(truths, self.max_trace_tokens) if truths else self.max_trace_tokens
        out = []
        for prompt, text in zip(prompts, self._generate(prompts, limits, (self.end,), "rollouts")):
            try:
                out.append((text, decode(prompt + text)))
            except TraceDecodeError:
                out.append((text, None))
        return out

    def rollout(self, traces: list[Trace]) -> tuple[Score, Score]:
        """(whole-trace exact match, output prediction by rollout)."""
        whole, output = Score(), Score()
        truths = [encode(t)[len(rollout_prompt(t)):] for t in traces]
        for trace, (_, predicted) in zip(traces, self.rollout_texts(traces, truths)):
            truth = [(f.event, f.line, f.locals, f.value) for f in trace.frames]
            mine = [(f.event, f.line, f.locals, f.value) for f in predicted.frames] if predicted else None
            whole.add(mine == truth)
            output.add(same_value(returned(predicted), trace.return_value))
        return whole, output

    def chat_answer(self, programs: list[tuple[str, str, str]]) -> Score:
        """Output prediction in the chat format the SFT stage teaches (no reasoning section): the reply's
        ``The call returns `VALUE`.`` compared by value."""
        from opencwm.data.sft import answer_text, parse_answer, question_messages
        from opencwm.special_tokens import END_OF_TURN

        prompts = [encode_messages(question_messages(source, call, think=False), add_generation_prompt=True)
                   for source, call, _ in programs]
        stops = (self.end, self.tokenizer.token_id(END_OF_TURN))
        limits = self._budget([answer_text(expected) for _, _, expected in programs], self.max_frame_tokens)
        score = Score()
        for (_, _, expected), got in zip(programs, self._generate(prompts, limits, stops, "chat answers")):
            score.add(same_value(parse_answer(got), expected))
        return score

    def direct(self, programs: list[tuple[str, str, str]]) -> Score:
        """``programs``: (source, call, expected repr of the result)."""
        prompts = [direct_prompt(source, call) for source, call, _ in programs]
        newline = self.tokenizer.encode("\n")
        stops = (self.end, *newline) if len(newline) == 1 else (self.end,)
        score = Score()
        limits = self._budget([expected for _, _, expected in programs], self.max_frame_tokens)
        for (_, _, expected), got in zip(programs, self._generate(prompts, limits, stops, "direct answers")):
            score.add(same_value(got.split("\n")[0], expected))
        return score


def held_out_programs(rows_and_traces) -> list[tuple[str, str, str]]:
    """``(source, call, expected repr of the result)`` of every traced program with a call: what ``direct`` and
    ``chat_answer`` score."""
    return [(trace.source, row["call"], trace.return_value) for row, trace in rows_and_traces if row.get("call")]


def evaluate_traces(evaluator: TraceEvaluator, rows_and_traces, *, limit: int | None = None,
                    max_frames_per_trace: int | None = None, chat: bool = False,
                    first_position_bucket: int = 512) -> dict:
    """All world-modeling figures on held-out traces (rows from ``opencwm.trace.collect.read_traces``); the frame
    exact match by position starts its buckets at ``first_position_bucket`` tokens (e.g. the training sequence
    length)."""
    chosen = [(row, trace) for row, trace in rows_and_traces if trace.status == "ok" and trace.frames][:limit]
    traces = [trace for _, trace in chosen]
    by_kind: dict[str, Score] = {}
    all_but: dict[str, Score] = {}
    by_position: dict[int, Score] = {}
    frames, frame_tokens = evaluator.next_frame_scores(traces, max_frames_per_trace, by_kind, all_but, by_position,
                                                       first_position_bucket)
    whole, output = evaluator.rollout(traces)
    programs = held_out_programs(chosen)
    direct = evaluator.direct(programs)
    extra = {"output_exact_match_chat": evaluator.chat_answer(programs).rate} if chat else {}
    return {**extra, "frame_exact_match": frames.rate, "frames": frames.total,
            "frame_token_accuracy": frame_tokens.rate, "trace_exact_match": whole.rate,
            "frame_token_accuracy_by_kind": {k: by_kind[k].rate for k in FRAME_TOKEN_KINDS if k in by_kind},
            "frame_exact_match_if_right": {k: all_but[k].rate for k in FRAME_TOKEN_KINDS if k in all_but},
            "frame_exact_match_by_position": {str(k): [by_position[k].correct, by_position[k].total]
                                              for k in sorted(by_position)},
            "output_exact_match_rollout": output.rate, "output_exact_match_direct": direct.rate,
            "traces": len(traces)}


def format_report(report: dict) -> str:
    """The report as a readable table (as lm-evaluation-harness prints one): a row per figure, nested figures
    (by token kind, by position) as indented rows, rates as percentages, what is missing and why."""
    rows: list[tuple[str, str]] = []

    def value(x) -> str:
        if x is None:
            return "n/a"
        if isinstance(x, float):
            return f"{x:.2%}" if 0 <= x <= 1 else f"{x:.4g}"
        if isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x):  # [correct, total]
            return f"{x[0]}/{x[1]}" + (f" ({x[0] / x[1]:.1%})" if x[1] else "")
        return str(x)

    for key, figure in report.items():
        if isinstance(figure, dict):
            rows.append((key, ""))
            rows += [(f"  {name}", value(inner)) for name, inner in figure.items()]
        else:
            rows.append((key, value(figure)))
    width = max(len(name) for name, _ in rows)
    right = max(len(shown) for _, shown in rows)
    lines = [f"| {'figure':<{width}} | {'value':>{right}} |", f"|{'-' * (width + 2)}|{'-' * (right + 2)}|"]
    lines += [f"| {name:<{width}} | {shown:>{right}} |" for name, shown in rows]
    return "\n".join(lines)

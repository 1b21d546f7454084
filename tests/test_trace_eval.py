"""The trace evaluator, end to end: a small model trained to memorise a few traces scores (near) perfectly on
them, an untrained one does not; value comparison follows Python's equality."""

from __future__ import annotations

import pytest
import torch

from opencwm.data.packing import Document, PackedStream
from opencwm.data.prompts import direct_prompt, direct_target
from opencwm.data.sft import sft_example
from opencwm.eval.cruxeval import real_traces
from opencwm.eval.trace_eval import (
    TraceEvaluator,
    frame_char_kinds,
    same_value,
    token_kinds,
)
from opencwm.model import CWM, preset
from opencwm.special_tokens import FRAME_SEP
from opencwm.tokenizer import Tokenizer
from opencwm.trace.codec import encode, encode_context, encode_frame
from opencwm.trace.program import trace_program
from opencwm.train.loop import TrainConfig, Trainer

PROGRAMS = [
    ("def f(a):\n    b = a * 2\n    return b + 1\n", "f(3)"),
    ("def f(s):\n    t = s.upper()\n    return t + '!'\n", "f('ab')"),
    ("def f(xs):\n    xs.append(4)\n    return len(xs)\n", "f([1, 2])"),
]


def test_same_value():
    assert same_value("(1, 2)", "(1,2)") and same_value("{'a': 1}", "{'a':1}") and not same_value("1", "2")
    assert same_value("<object>", "<object>") and not same_value(None, "1")


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    traces = [trace_program(source, call) for source, call in PROGRAMS]
    texts = [encode(t) for t in traces]
    directs = [direct_prompt(s, c) + direct_target(t.return_value) for (s, c), t in zip(PROGRAMS, traces)]
    chats = ["".join(sft_example(t, c, think=False)) for (_, c), t in zip(PROGRAMS, traces)]
    tokenizer = Tokenizer.train(texts + directs + chats, vocab_size=400)
    documents = [Document(tokenizer.encode(text, allow_special=True)) for text in texts + directs + chats]
    torch.manual_seed(0)
    config = preset("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    model = CWM(config).init_weights(seed=0)
    stream = PackedStream({"memorise": documents}, {"memorise": 1.0}, seq_len=256, seed=0)
    train = TrainConfig(steps=250, batch_size=4, lr=1e-2, warmup_steps=10, checkpoint_every=10_000, log_every=50)
    Trainer(model, stream, train, tmp_path_factory.mktemp("run")).train(progress=False)
    return model.eval(), tokenizer, traces


def test_memorised_traces_are_predicted(memorised):
    model, tokenizer, traces = memorised
    evaluator = TraceEvaluator(model, tokenizer, max_trace_tokens=300)
    frames, tokens = evaluator.next_frame_scores(traces)
    assert frames.total == sum(len(t.frames) - 1 for t in traces) and frames.rate >= 0.9  # the call frame is given
    assert tokens.total > 5 * frames.total and tokens.rate >= 0.9
    assert evaluator.next_frame_by_generation(traces) == frames  # one forward pass == greedy generation per frame
    by_kind = {}
    assert evaluator.next_frame_scores(traces, by_kind=by_kind) == (frames, tokens)
    assert sum(s.total for s in by_kind.values()) == tokens.total
    assert sum(s.correct for s in by_kind.values()) == tokens.correct
    assert {"event", "name", "unchanged", "value", "line", "returned", "format"} <= set(by_kind)
    whole, output = evaluator.rollout(traces)
    assert whole.total == 3 and output.rate >= 2 / 3
    direct = evaluator.direct([(s, c, t.return_value) for (s, c), t in zip(PROGRAMS, traces)])
    assert direct.rate >= 2 / 3
    assert evaluator.chat_answer([(s, c, t.return_value) for (s, c), t in zip(PROGRAMS, traces)]).rate >= 2 / 3


def test_frame_token_kinds_follow_the_trace_format():
    trace = trace_program("def f(a):\n    b = a * 2\n    return b + 1\n", "f(3)")
    line = trace.frames[2]  # locals after `b = a * 2`, about to run `return b + 1`
    text = encode_frame(line)
    assert text == '<|line_sep|>{"a": "..", "b": "6"}<|action_sep|>    return b + 1\n'
    # written out by hand from the format: event, {"name": "value", ...}, action separator, the source line
    expected = ("e" * len("<|line_sep|>") + "f" * 2 + "n" + "f" * 4 + "u" * 2 + "f" * 4 + "n" + "f" * 4 + "v"
                + "f" * 2 + "f" * len("<|action_sep|>") + "l" * len("    return b + 1\n"))
    assert "".join(k[0] for k in frame_char_kinds(line)) == expected
    returned = trace.frames[-1]
    kinds = frame_char_kinds(returned)
    assert encode_frame(returned).endswith('<|arg_sep|>"7"') and kinds[-3:] == ["returned"] * 3
    tokenizer = Tokenizer.train([encode(trace)], vocab_size=300)
    ids = tokenizer.encode(text, allow_special=True)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [k for p, k in zip(pieces, token_kinds(tokenizer, line, ids)) if p.strip(' "') == "6"] == ["value"]
    assert [k for p, k in zip(pieces, token_kinds(tokenizer, line, ids)) if p == "<|line_sep|>"] == ["event"]


def test_real_traces_come_from_the_sandbox():
    source = "def f(a, b=2):\n    c = a + b\n    return c\n"
    real, broken = real_traces([(source, "f(1)"), (source, "f(1, 2, 3)")])
    assert broken is None
    assert real.frames == trace_program(source, "f(1)").frames and real.frames[0].locals == {"a": "1", "b": "2"}


def test_an_untrained_model_scores_low(memorised):
    _, tokenizer, traces = memorised
    model = CWM(preset("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=512)).init_weights(seed=1)
    evaluator = TraceEvaluator(model.eval(), tokenizer, max_frame_tokens=40, max_trace_tokens=60)
    frames, tokens = evaluator.next_frame_scores(traces)
    assert frames.rate < 0.2 and tokens.rate < 0.5
    assert evaluator.next_frame(traces) == evaluator.next_frame_by_generation(traces)
    assert evaluator.rollout(traces)[1].rate < 0.5


def test_eval_cli_on_a_checkpoint(memorised, tmp_path):
    import json
    import subprocess
    import sys

    from opencwm.trace.collect import CollectConfig, collect

    model, tokenizer, _ = memorised
    model.save_pretrained(tmp_path / "model")
    tokenizer.save(tmp_path / "tokenizer")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"p{i}", "code": s, "call": c}) + "\n"
                             for i, (s, c) in enumerate(PROGRAMS)))
    collect(items, tmp_path / "traces", CollectConfig(workers=1, progress=False))
    result = subprocess.run([sys.executable, "-m", "opencwm.cli", "eval", "trace", "--model", str(tmp_path / "model"),
                             "--tokenizer", str(tmp_path / "tokenizer"), "--traces", str(tmp_path / "traces"),
                             "--cruxeval", str(tmp_path / "missing.jsonl"), "--max-trace-tokens", "300",
                             "--out", str(tmp_path / "report.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["traces"] == 3 and report["frame_exact_match"] >= 0.9
    assert report["cruxeval_o_direct"] is None and "no such file" in report["cruxeval_missing"]
    table = result.stdout.splitlines()  # a table on stdout: a row per figure, rates as percentages
    assert table[0].startswith("| figure") and any(line.replace(" ", "") == "|traces|3|" for line in table)
    assert any(line.startswith("| frame_exact_match ") and line.rstrip().endswith("% |") for line in table)


def test_cruxeval_sources_say_what_is_missing(tmp_path):
    from opencwm.eval.cruxeval import load_cruxeval

    items, why = load_cruxeval(str(tmp_path / "absent.jsonl"))
    assert items is None and "no such file" in why
    path = tmp_path / "crux.jsonl"
    path.write_text('{"code": "def f(x):\\n    return x", "input": "1", "output": "1", "id": "a"}\n')
    assert load_cruxeval(str(path)) == ([{"code": "def f(x):\n    return x", "input": "1", "output": "1", "id": "a"}],
                                        None)
    try:
        import datasets  # noqa: F401
    except ImportError:
        items, why = load_cruxeval("hf")
        assert items is None and "pip install 'opencwm[hf]'" in why


def test_copying_accuracy_is_one_for_a_perfect_copier_and_near_zero_otherwise():
    from opencwm.eval.copying import copying_accuracy

    class Copier(torch.nn.Module):
        """Predicts at position i the token at i + 1 - back: a perfect copier of the stretch when back == its
        length, off by one otherwise."""

        def __init__(self, back: int, vocab: int = 64):
            super().__init__()
            self.back, self.vocab, self.device = back, vocab, torch.device("cpu")

        def forward(self, ids):
            source = torch.roll(ids, self.back - 1, dims=1)
            return torch.nn.functional.one_hot(source, self.vocab).float()

    assert copying_accuracy(Copier(40), low=0, high=64, length=40) == 1.0
    assert copying_accuracy(Copier(41), low=0, high=64, length=40) < 0.1
    assert copying_accuracy(Copier(39), low=0, high=64, length=40) < 0.1
    untrained = CWM(preset("nano", vocab_size=64, max_position_embeddings=256)).init_weights(seed=1).eval()
    assert copying_accuracy(untrained, low=0, high=64, length=40) < 0.2


def _laid_out(traces, tokenizer):
    """Each trace's token ids and the kind of each id, laid out the way the evaluator lays a trace out."""
    from opencwm.trace.codec import encode_context

    sequences = []
    for trace in traces:
        ids = tokenizer.encode(encode_context(trace.source, trace.entry_lineno), allow_special=True)
        kinds = ["context"] * len(ids)
        for frame in trace.frames:
            piece = tokenizer.encode(encode_frame(frame), allow_special=True)
            ids += [*piece, tokenizer.token_id(FRAME_SEP)]
            kinds += [*token_kinds(tokenizer, frame, piece), "format"]
        sequences.append((ids, kinds))
    return sequences


class TruthExcept(torch.nn.Module):
    """A stand-in model that predicts every true next token of the laid-out ``sequences``, except where
    ``wrong(index, kind)`` holds for the token to predict (its index in the sequence and its kind)."""

    def __init__(self, sequences, vocab_size, wrong):
        from types import SimpleNamespace

        super().__init__()
        self.sequences, self.vocab_size, self.wrong = sequences, vocab_size, wrong
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.device = torch.device("cpu")

    def forward(self, ids):
        row = ids[0].tolist()
        full, kinds = next(s for s in self.sequences if s[0][: len(row)] == row)
        targets = [(full[i + 1] + self.wrong(i + 1, kinds[i + 1])) % self.vocab_size if i + 1 < len(full) else 0
                   for i in range(len(row))]
        return torch.nn.functional.one_hot(torch.tensor([targets]), self.vocab_size).float()


@pytest.mark.parametrize("kind", ["line", "returned"])
def test_frame_exact_match_if_one_kind_were_right_against_a_model_wrong_on_that_kind_only(kind):
    """A stand-in model predicts every true next token except the tokens of one kind (the source line, or a
    return value: both start after a special token, so a frame has such tokens exactly when it has such
    characters). Frames without that kind are exact; with it always right every frame would be."""
    traces = [trace_program(source, call) for source, call in PROGRAMS]
    tokenizer = Tokenizer.train([encode(t) for t in traces], vocab_size=400)
    sequences = _laid_out(traces, tokenizer)
    wrong_tokens = 0  # the kind's tokens after the call frame (the input, not scored; it ends at the 2nd separator)
    for ids, kinds in sequences:
        separators = [i for i, token in enumerate(ids) if token == tokenizer.token_id(FRAME_SEP)]
        wrong_tokens += kinds[separators[1] + 1 :].count(kind)
    all_but = {}
    model = TruthExcept(sequences, tokenizer.vocab_size, lambda index, token_kind: token_kind == kind)
    frames, tokens = TraceEvaluator(model, tokenizer).next_frame_scores(traces, all_but=all_but)
    scored = [frame for trace in traces for frame in trace.frames[1:]]  # the call frame is the input
    without = sum(kind not in frame_char_kinds(frame) for frame in scored)
    assert frames.total == len(scored) and frames.correct == without < len(scored)
    assert tokens.total - tokens.correct == wrong_tokens > 0
    assert all_but[kind].correct == all_but[kind].total == len(scored)
    assert all(all_but[other].correct == without for other in all_but if other != kind)


def test_frame_exact_match_by_position_against_a_model_wrong_from_one_position_on():
    """A stand-in model right on every token before position ``cut`` and wrong from there on: the frames that
    end by ``cut`` (the first bucket) are exact, every later one is wrong, and the buckets double from ``cut``."""
    traces = [trace_program("def f(n):\n    t = 0\n    for i in range(n):\n        t += i\n    return t\n", "f(9)")]
    tokenizer = Tokenizer.train([encode(t) for t in traces], vocab_size=400)
    sequences = _laid_out(traces, tokenizer)
    ids, _ = sequences[0]
    separators = [i for i, token in enumerate(ids) if token == tokenizer.token_id(FRAME_SEP)]
    ends = [i + 1 for i in separators[2:]]  # each scored frame ends after its closing separator (frame 0: context)
    cut = ends[len(ends) // 4]
    by_position = {}
    model = TruthExcept(sequences, tokenizer.vocab_size, lambda index, kind: index >= cut)
    frames, _ = TraceEvaluator(model, tokenizer).next_frame_scores(traces, by_position=by_position,
                                                                 first_position_bucket=cut)
    expected = {}
    for end in ends:
        edge = cut
        while edge < end:
            edge *= 2
        expected.setdefault(edge, [0, 0])
        expected[edge][0] += end <= cut
        expected[edge][1] += 1
    assert len(expected) >= 3 and frames.total == len(ends) and frames.correct == expected[cut][0] > 0
    assert {edge: [score.correct, score.total] for edge, score in by_position.items()} == expected


def test_windowed_reading_scores_every_frame_once_and_equals_whole_traces_when_they_fit():
    """Reading traces in training windows (``window``) changes what a frame's prediction sees, never which frames
    are scored or where they end; a window as long as the traces is the whole trace."""
    source = "def f(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\n"
    traces = [trace_program(source, "f(12)"), trace_program(source, "f(2)")]
    tokenizer = Tokenizer.train([encode(t) for t in traces], vocab_size=400)
    model = CWM(preset("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=1024)).init_weights(seed=1)
    longest = max(len(tokenizer.encode(encode(t), allow_special=True)) for t in traces)
    context = len(tokenizer.encode(encode_context(source, traces[0].entry_lineno), allow_special=True))
    tight = 2 * context  # the context and the frame before fill most of it: windows pass it by their one frame
    scores = {}
    for window in (None, longest, 128, tight):
        by_position = {}
        scores[window] = (TraceEvaluator(model.eval(), tokenizer, window=window).next_frame_scores(
            traces, by_position=by_position, first_position_bucket=64), by_position)
    assert scores[longest] == scores[None]
    (frames, tokens), by_position = scores[128]
    assert longest > 2 * 128 and frames.total == scores[None][0][0].total and tokens.total == scores[None][0][1].total
    assert {k: s.total for k, s in by_position.items()} == {k: s.total for k, s in scores[None][1].items()}
    (frames, tokens), _ = scores[tight]
    assert frames.total == scores[None][0][0].total and tokens.total == scores[None][0][1].total

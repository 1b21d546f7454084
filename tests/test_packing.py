"""Packing and the data stream: document boundaries, loss masks, determinism, exact resume, mixture ratios."""

from __future__ import annotations

import json
import random

import pytest

from opencwm.data.packing import IGNORE, Document, PackedStream


def _documents(prefix: int, count: int, rng: random.Random) -> list[Document]:
    """Documents whose tokens encode (source, document, position), so every packed token can be traced back."""
    docs = []
    for d in range(count):
        length = rng.randint(1, 40)
        tokens = [prefix * 1_000_000 + d * 1000 + i for i in range(length)]
        mask = [rng.random() < 0.7 for _ in range(length)]
        docs.append(Document(tokens, mask))
    return docs


@pytest.fixture
def sources():
    rng = random.Random(0)
    return {"code": _documents(1, 50, rng), "traces": _documents(2, 30, rng)}


def _origin(token: int) -> tuple[int, int, int]:
    return token // 1_000_000, token // 1000 % 1000, token % 1000


def test_packed_sequences_respect_documents_and_loss_masks(sources):
    stream = PackedStream(sources, {"code": 1.0, "traces": 1.0}, seq_len=64, seed=1)
    masks = {(p, d): doc.loss_mask for p, name in ((1, "code"), (2, "traces"))
             for d, doc in enumerate(sources[name])}
    for _ in range(50):
        row = stream.next_sequence()
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["document_ids"]) == 64
        for t, (token, label, doc_id) in enumerate(zip(row["input_ids"], row["labels"], row["document_ids"])):
            if t + 1 < 64 and row["document_ids"][t + 1] == doc_id:
                successor = row["input_ids"][t + 1]
                assert _origin(successor)[:2] == _origin(token)[:2]  # same document id, same source document
                expected = successor if masks[_origin(successor)[:2]][_origin(successor)[2]] else IGNORE
                assert label == expected
            elif t + 1 < 64:
                assert label == IGNORE  # never predict across a document boundary
        # document ids number the segments of this sequence in order
        assert row["document_ids"][0] == 0
        assert all(b - a in (0, 1) for a, b in zip(row["document_ids"], row["document_ids"][1:]))


def test_same_seed_same_stream_and_exact_resume(sources):
    weights = {"code": 2.0, "traces": 1.0}
    reference = PackedStream(sources, weights, seq_len=50, seed=7)
    expected = [reference.next_sequence() for _ in range(40)]
    stream = PackedStream(sources, weights, seq_len=50, seed=7)
    got = [stream.next_sequence() for _ in range(17)]
    state = json.loads(json.dumps(stream.state_dict()))  # survives a JSON checkpoint
    resumed = PackedStream(sources, weights, seq_len=50, seed=7)
    resumed.load_state_dict(state)
    got += [resumed.next_sequence() for _ in range(23)]
    assert got == expected
    other = PackedStream(sources, weights, seq_len=50, seed=8)
    assert [other.next_sequence() for _ in range(5)] != expected[:5]


def test_mixture_weights_set_the_share_of_tokens():
    rng = random.Random(1)
    long_docs = [Document([1_000_000 + d * 1000 + i for i in range(rng.randint(60, 120))]) for d in range(40)]
    sources = {"code": long_docs, "traces": _documents(2, 30, rng)}
    stream = PackedStream(sources, {"code": 3.0, "traces": 1.0}, seq_len=128, seed=3)
    counts = {1: 0, 2: 0}
    seen = set()
    for _ in range(400):
        for token in stream.next_sequence()["input_ids"]:
            key = _origin(token)[:2]
            if _origin(token)[2] == 0 and key not in seen:
                seen.add(key)
            counts[_origin(token)[0]] += 1
    mean = {n: sum(len(d.tokens) for d in sources[n]) / len(sources[n]) for n in ("code", "traces")}
    assert abs(mean["code"] / mean["traces"] - 1) > 0.3  # the sources' documents differ in length ...
    assert 2.6 < counts[1] / counts[2] < 3.4  # ... yet tokens come 3:1, as the weights say


def test_every_document_appears_once_per_epoch(sources):
    stream = PackedStream({"code": sources["code"]}, {"code": 1.0}, seq_len=32, seed=0)
    starts = []
    while len(starts) < 2 * len(sources["code"]):
        starts += [_origin(t)[1] for t in stream.next_sequence()["input_ids"] if _origin(t)[2] == 0]
    epoch = len(sources["code"])
    assert sorted(starts[:epoch]) == list(range(epoch))  # each document once in the first epoch ...
    assert sorted(starts[epoch : 2 * epoch]) == list(range(epoch))  # ... and once in the second
    assert starts[:epoch] != starts[epoch : 2 * epoch]  # in a new order


def test_bad_configuration_is_refused(sources):
    with pytest.raises(ValueError):
        PackedStream(sources, {"nope": 1.0}, seq_len=8)
    with pytest.raises(ValueError):
        PackedStream({"empty": []}, {"empty": 1.0}, seq_len=8)
    with pytest.raises(ValueError):
        Document([1, 2], [True])


def test_next_token_labels_equal_the_packers_labels_for_one_document_per_row():
    import torch

    from opencwm.data.packing import next_token_labels

    docs = [Document(list(range(100 + 16 * i, 116 + 16 * i))) for i in range(3)]  # exactly one row each
    batch = PackedStream({"d": docs}, {"d": 1.0}, seq_len=16, seed=0).next_batch(3)
    assert (batch["document_ids"] == batch["document_ids"][:, :1]).all()  # one document per row
    assert torch.equal(next_token_labels(batch["input_ids"]), batch["labels"])


LOOP = "def f(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n    return total\n"


@pytest.mark.parametrize("call", ["f(0)", "f(30)"])
def test_trace_windows_learn_every_frame_once_with_the_source_in_view(call):
    """Each window fits the training length (or holds one new frame), starts with the trace's context and the
    frame before its first learned one, and the learned tokens of all windows are exactly the trace as the codec
    writes it."""
    from opencwm.data.documents import trace_windows
    from opencwm.tokenizer import Tokenizer
    from opencwm.trace.codec import encode, encode_context
    from opencwm.trace.program import trace_program

    trace = trace_program(LOOP, call)
    tokenizer = Tokenizer.train([LOOP, encode(trace)] * 5, vocab_size=300)
    whole = tokenizer.encode(encode(trace), allow_special=True)
    context = tokenizer.encode(encode_context(trace.source, trace.entry_lineno), allow_special=True)
    windows = trace_windows(trace, tokenizer, 256)
    assert (len(windows) == 1) == (len(whole) <= 256)
    learned = [t for window in windows for t, m in zip(window.tokens, window.loss_mask) if m]
    assert learned == whole
    for window in windows:
        new_frames = tokenizer.decode([t for t, m in zip(window.tokens, window.loss_mask) if m]).count("<|frame_sep|>")
        assert window.tokens[: len(context)] == context and (len(window.tokens) <= 256 or new_frames == 1)
        assert tokenizer.decode(window.tokens).count("<|trace_context_start|>") == 1
    for window in windows[1:]:
        unlearned = tokenizer.decode([t for t, m in zip(window.tokens, window.loss_mask) if not m])
        assert unlearned.count("<|frame_sep|>") == 2  # the context's and the repeated frame's
    # a source longer than half the window (a repository's module) is not repeated: the trace stays whole
    assert 2 * len(context) > 128 and [w.tokens for w in trace_windows(trace, tokenizer, 128)] == [whole]

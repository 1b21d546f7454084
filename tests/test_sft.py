"""SFT examples: the chat layout, loss on the assistant's reply only, answers that round-trip, and reasoning whose
steps agree with the real interpreter."""

from __future__ import annotations

import ast
import json

from hypothesis import given
from hypothesis import strategies as st

from opencwm.chat import decode_messages
from opencwm.data.sft import answer_text, parse_answer, reasoning, sft_documents, sft_example
from opencwm.tokenizer import Tokenizer
from opencwm.trace.collect import CollectConfig, collect
from opencwm.trace.program import trace_program

SOURCE = "def helper(n):\n    return n * 2\n\ndef f(xs):\n    total = 0\n    for x in xs:\n" \
         "        total += helper(x)\n    return total\n"


@given(st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=5)).map(repr))
def test_answers_round_trip(value):
    assert parse_answer(answer_text(value)) == value
    assert parse_answer("<think>\nThe call returns `0`.\n</think>\n" + answer_text(value)) == value


def test_example_layout_and_reasoning_follow_the_real_execution():
    trace = trace_program(SOURCE, "f([1, 2])")
    prompt, reply = sft_example(trace, "f([1, 2])", think=True)
    messages = decode_messages(prompt.removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
                               )
    assert [m["role"] for m in messages] == ["system", "user"] and "<think>" in messages[0]["content"]
    assert "f([1, 2])" in messages[1]["content"] and SOURCE.rstrip() in messages[1]["content"]
    namespace: dict = {}
    exec(SOURCE, namespace)
    assert reply.endswith(answer_text(repr(namespace["f"]([1, 2]))) + "<|eot_id|>")
    steps = reasoning(trace).splitlines()
    returns = [line.strip() for line in steps if line.strip().startswith("return ") and ":" not in line]
    assert returns == [f"return {namespace['helper'](1)!r}", f"return {namespace['helper'](2)!r}",
                       f"return {namespace['f']([1, 2])!r}"]
    assert steps[0] == "enter f(xs=[1, 2])" and "  enter helper(n=1)" in steps


def test_documents_learn_only_the_reply(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"p{i}", "code": SOURCE, "call": call}) + "\n"
                             for i, call in enumerate(["f([1])", "f([3, 4])", "f([])"])))
    collect(items, tmp_path / "traces", CollectConfig(workers=1, progress=False))
    tokenizer = Tokenizer.train([SOURCE] * 10, vocab_size=300)
    docs = sft_documents(tmp_path / "traces", tokenizer)
    assert len(docs) == 3
    calls = set()
    for doc in docs:
        learned = tokenizer.decode([t for t, m in zip(doc.tokens, doc.loss_mask) if m])
        shown = tokenizer.decode([t for t, m in zip(doc.tokens, doc.loss_mask) if not m])
        assert learned.endswith("<|eot_id|>") and "What does" not in learned and SOURCE.rstrip() in shown
        call = shown.split("What does `")[1].split("` return?")[0]
        calls.add(call)
        assert ast.literal_eval(parse_answer(learned)) == eval(call, {"f": _f()})
    assert calls == {"f([1])", "f([3, 4])", "f([])"}
    assert "<think>" in tokenizer.decode(docs[0].tokens) and "<think>" not in tokenizer.decode(docs[1].tokens)


def _f():
    namespace: dict = {}
    exec(SOURCE, namespace)
    return namespace["f"]

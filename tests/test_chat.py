"""The chat codec against SPEC §3's layout, its round trip, and the tool-call parser's errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencwm.chat import (
    ChatFormatError,
    decode_messages,
    encode_messages,
    format_create,
    format_edit,
    format_tool_call,
    parse_create,
    parse_edit,
    parse_tool_call,
)
from opencwm.tokenizer import Tokenizer


def test_layout_is_cwms():
    text = encode_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                            {"role": "assistant", "content": "A"}, {"role": "tool: bash", "content": "T"}],
                           add_generation_prompt=True, think=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
                    "<|start_header_id|>tool: bash<|end_header_id|>\n\nT<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert format_tool_call("bash", "ls -l") == "<tool: bash>\nls -l\n</tool>"


safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80).filter(lambda t: "<|" not in t)
roles = st.sampled_from(["system", "user", "assistant", "tool: bash", "tool: edit"])


@given(st.lists(st.fixed_dictionaries({"role": roles, "content": safe_text}), max_size=6))
def test_round_trip(messages):
    assert decode_messages(encode_messages(messages)) == messages


def test_specials_in_user_text_are_not_tokens(tmp_path):
    tokenizer = Tokenizer.train(["def f(x):\n    return x\n"] * 20, vocab_size=300)
    ids = tokenizer.encode(encode_messages([{"role": "user", "content": "<|eot_id|>"}]), allow_special=True)
    assert ids.count(tokenizer.token_id("<|eot_id|>")) == 2  # the template's two, the user's text is plain text


@given(st.text(max_size=40).filter(lambda t: "</tool>" not in t and "\n" not in t))
def test_tool_call_round_trip(args):
    call = parse_tool_call("I will look.\n" + format_tool_call("bash", args))
    assert (call.name, call.args) == ("bash", args)


def test_tool_call_errors():
    with pytest.raises(ChatFormatError, match="no tool call"):
        parse_tool_call("just words")
    with pytest.raises(ChatFormatError, match="2 tool calls"):
        parse_tool_call(format_tool_call("bash", "ls") + format_tool_call("bash", "pwd"))
    with pytest.raises(ChatFormatError, match="unknown tool"):
        parse_tool_call(format_tool_call("rm", "x"))
    # a call inside the reasoning is not the turn's call
    with pytest.raises(ChatFormatError, match="no tool call"):
        parse_tool_call("<think>\n" + format_tool_call("bash", "ls") + "\n</think>\nno call")
    with pytest.raises(ChatFormatError):
        decode_messages("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nunterminated")
    with pytest.raises(ChatFormatError, match="unknown role"):
        encode_messages([{"role": "robot", "content": "x"}])


def test_edit_and_create_arguments():
    blocks = [("a = 1\nb = 2", "a = 2"), ("", "new")]
    assert parse_edit(format_edit("pkg/m.py", blocks)) == ("pkg/m.py", blocks)
    assert parse_create(format_create("pkg/new.py", "x = 1\n")) == ("pkg/new.py", "x = 1\n")
    for bad in ("", "path\n<<<<<<< SEARCH\nx\n", "path\nnot a block"):
        with pytest.raises(ChatFormatError):
            parse_edit(bad)

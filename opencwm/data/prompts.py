"""The texts a model is asked to continue, one owner for training data and evaluation alike: the direct-answer
prompt and its target (CruxEval-O's ``assert f(x) == ``), the rollout prompt (a trace's source and entry call frame,
as CWM's neural debugger starts), and an agent trajectory as training text."""

from __future__ import annotations

import json

from opencwm.chat import encode_messages
from opencwm.special_tokens import BEGIN_OF_TEXT, END_OF_TEXT, FRAME_SEP
from opencwm.trace.codec import encode_context, encode_frame
from opencwm.trace.record import Trace


def direct_prompt(source: str, call: str) -> str:
    return f"{BEGIN_OF_TEXT}{source.rstrip()}\n\nassert {call} == "


def direct_target(value_repr: str) -> str:
    return f"{value_repr}\n"


def rollout_prompt(trace: Trace) -> str:
    """The source context and the entry call frame (the input)."""
    return encode_context(trace.source, trace.entry_lineno) + encode_frame(trace.frames[0]) + FRAME_SEP


def trajectory_text(trajectory: dict) -> str:
    """An agent trajectory (a row of a trajectory dataset) as CWM-format training text: the conversation in the
    chat format, then end-of-text."""
    return encode_messages(json.loads(trajectory["messages"])) + END_OF_TEXT

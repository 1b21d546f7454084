"""SFT examples in CWM's chat format, made from traced programs: "what does this call return?" with the answer,
either directly or after a ``<think>`` section that walks through the execution (the trace rendered as readable
steps, as CWM rewrote some traces as step-by-step reasoning). Only the assistant's tokens are learned.

    messages = question_messages(source, call, think=True)
    answer_text(value)                 # "The call returns `VALUE`."
    parse_answer(text)                 # VALUE, or None
"""

from __future__ import annotations

import re
from pathlib import Path

from opencwm.chat import REASONING_SYSTEM_PROMPT, THINK_END, encode_messages
from opencwm.data.packing import Document
from opencwm.special_tokens import END_OF_TURN
from opencwm.tokenizer import Tokenizer
from opencwm.trace.record import CALL, EXCEPTION, RETURN, UNCHANGED, Trace

_ANSWER = re.compile(r"The call returns `(.*)`\.", re.S)


def question_messages(source: str, call: str, *, think: bool) -> list[dict]:
    question = f"What does `{call}` return?\n\n```python\n{source.rstrip()}\n```"
    system = [{"role": "system", "content": REASONING_SYSTEM_PROMPT}] if think else []
    return [*system, {"role": "user", "content": question}]


def answer_text(value: str) -> str:
    return f"The call returns `{value}`."


def parse_answer(text: str) -> str | None:
    visible = text.split(THINK_END, 1)[1] if THINK_END in text else text
    match = _ANSWER.search(visible)
    return match.group(1) if match else None


def reasoning(trace: Trace, max_lines: int = 60) -> str:
    """The execution as compact readable steps: the values each line produced (as a comment), the lines run,
    calls entered with their arguments, values returned or raised; nested calls indented."""
    lines, depth = [], 0
    for frame in trace.frames:
        changed = ", ".join(f"{k}={v}" for k, v in (frame.locals or {}).items() if v != UNCHANGED)
        code = frame.line.strip()
        if frame.event == CALL:
            name = code.removeprefix("def ").split("(")[0]
            lines.append(f"{'  ' * depth}enter {name}({changed})")
            depth += 1
        elif frame.event == RETURN or frame.event == EXCEPTION:
            verb = "return" if frame.event == RETURN else "raise"
            lines.append(f"{'  ' * max(depth - 1, 0)}{verb} {frame.value}")
            depth = max(depth - 1, 0)
        else:
            note = f"  # {changed}" if changed else ""
            lines.append(f"{'  ' * max(depth - 1, 0)}line {frame.lineno}: {code}{note}")
    if len(lines) > max_lines:
        lines = [*lines[: max_lines // 2], f"... ({len(lines) - max_lines} steps) ...", *lines[-max_lines // 2 :]]
    return "\n".join(lines)


def sft_example(trace: Trace, call: str, *, think: bool) -> tuple[str, str]:
    """(prompt text up to the assistant header, assistant text) of one example."""
    prompt = encode_messages(question_messages(trace.source, call, think=think), add_generation_prompt=True,
                             think=think)
    body = f"{reasoning(trace)}\n{THINK_END}\n" if think else ""
    return prompt, body + answer_text(trace.return_value) + END_OF_TURN


def sft_documents(directory: str | Path, tokenizer: Tokenizer, *, think: str = "both",
                  limit: int | None = None) -> list[Document]:
    """Chat examples of every returned call in a trace dataset; ``think``: "yes", "no" or "both" (alternating).
    The loss mask covers the assistant's reply only."""
    from opencwm.trace.collect import read_traces

    if think not in ("yes", "no", "both"):
        raise ValueError("think must be yes, no or both")
    docs = []
    for index, (row, trace) in enumerate(read_traces(directory)):
        if trace.status != "ok" or not row.get("call") or trace.return_value is None:
            continue
        with_think = think == "yes" or (think == "both" and index % 2 == 0)
        prompt, reply = sft_example(trace, row["call"], think=with_think)
        prompt_ids = tokenizer.encode(prompt, allow_special=True)
        reply_ids = tokenizer.encode(reply, allow_special=True)
        docs.append(Document(prompt_ids + reply_ids, [False] * len(prompt_ids) + [True] * len(reply_ids)))
        if limit and len(docs) >= limit:
            break
    return docs


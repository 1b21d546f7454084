"""The one codec for CWM's chat format (SPEC §3): messages, reasoning and tool calls.

A conversation is ``<|begin_of_text|>`` followed by messages
``<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>`` with ROLE one of ``system``, ``user``,
``assistant`` or ``tool: NAME``; the model is prompted with an assistant header (primed with ``<think>\\n`` in
reasoning mode). An assistant turn holds at most one tool call, ``<tool: NAME>\\nARGS\\n</tool>``, after any text.

Tools of the agentic setup and their ARGS:

- ``bash``: a shell command or script;
- ``edit``: the file's path on the first line, then one or more blocks
  ``<<<<<<< SEARCH`` / old text / ``=======`` / new text / ``>>>>>>> REPLACE``;
- ``create``: the file's path on the first line, then its content;
- ``submit``: nothing (the episode ends; the patch is the work tree's git diff).

Used by SFT data, the forager's agent loop and trajectories' training text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opencwm.special_tokens import BEGIN_OF_TEXT, END_HEADER, END_OF_TURN, START_HEADER

ROLES = ("system", "user", "assistant")
TOOLS = ("bash", "edit", "create", "submit")
THINK_START, THINK_END = "<think>", "</think>"
REASONING_SYSTEM_PROMPT = "You are a helpful AI assistant. You always reason before responding, using the " \
    "following format:\n\n<think>\nyour internal reasoning\n</think>\nyour external response"
_TOOL_CALL = re.compile(r"<tool: ([A-Za-z_][\w-]*)>\n(.*?)\n?</tool>", re.S)
_MESSAGE = re.compile(re.escape(START_HEADER) + r"(.*?)" + re.escape(END_HEADER) + r"\n\n(.*?)"
                      + re.escape(END_OF_TURN), re.S)
SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"


class ChatFormatError(ValueError):
    """Text that is not a well-formed CWM conversation or tool call."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: str


def tool_role(name: str) -> str:
    return f"tool: {name}"


def _check_role(role: str) -> None:
    if role not in ROLES and not re.fullmatch(r"tool: [A-Za-z_][\w-]*", role):
        raise ChatFormatError(f"unknown role {role!r} (system, user, assistant or 'tool: NAME')")


# The same format as a Jinja chat template, saved with every tokenizer (``tokenizer_config.json``), so that
# ``transformers``' ``apply_chat_template`` and vLLM's chat endpoint prompt a model as ``encode_messages`` does;
# ``enable_thinking`` (a template argument, e.g. vLLM's ``chat_template_kwargs``) is ``think``.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '" + START_HEADER + "' + message['role'] + '" + END_HEADER + "\\n\\n' + message['content'] + '"
    + END_OF_TURN + "' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + START_HEADER + "assistant" + END_HEADER + "\\n\\n' }}"
    "{% if enable_thinking %}{{ '" + THINK_START + "\\n' }}{% endif %}{% endif %}"
)


def encode_message(role: str, content: str) -> str:
    _check_role(role)
    return f"{START_HEADER}{role}{END_HEADER}\n\n{content}{END_OF_TURN}"


def encode_messages(messages: list[dict], *, add_generation_prompt: bool = False, think: bool = False) -> str:
    """``messages``: dicts with ``role`` and ``content``. With ``add_generation_prompt`` the text ends with an
    assistant header (and ``<think>\\n`` when ``think``), ready for the model to write the next turn."""
    text = BEGIN_OF_TEXT + "".join(encode_message(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        text += f"{START_HEADER}assistant{END_HEADER}\n\n" + (f"{THINK_START}\n" if think else "")
    return text


def decode_messages(text: str) -> list[dict]:
    """The messages of an encoded conversation (the inverse of ``encode_messages`` without a generation prompt)."""
    if not text.startswith(BEGIN_OF_TEXT):
        raise ChatFormatError("a conversation starts with <|begin_of_text|>")
    body, messages, position = text[len(BEGIN_OF_TEXT):], [], 0
    for match in _MESSAGE.finditer(body):
        if match.start() != position:
            raise ChatFormatError(f"unexpected text at offset {position}: {body[position:position + 40]!r}")
        _check_role(match.group(1))
        messages.append({"role": match.group(1), "content": match.group(2)})
        position = match.end()
    if position != len(body):
        raise ChatFormatError(f"unterminated message at offset {position}: {body[position:position + 40]!r}")
    return messages


def format_tool_call(name: str, args: str = "") -> str:
    return f"<tool: {name}>\n{args}\n</tool>"


def parse_tool_call(text: str, tools: tuple[str, ...] = TOOLS) -> ToolCall:
    """The one tool call of an assistant turn (after any reasoning). Raises ``ChatFormatError`` with a message
    fit to show the model when there is none, several, or an unknown tool."""
    visible = text.split(THINK_END, 1)[1] if THINK_END in text else text
    calls = _TOOL_CALL.findall(visible)
    if not calls:
        raise ChatFormatError("no tool call found: end your turn with exactly one <tool: NAME>\\nARGS\\n</tool> "
                              f"block (tools: {', '.join(tools)})")
    if len(calls) > 1:
        raise ChatFormatError(f"{len(calls)} tool calls found: use exactly one per turn")
    name, args = calls[0]
    if name not in tools:
        raise ChatFormatError(f"unknown tool {name!r} (tools: {', '.join(tools)})")
    return ToolCall(name, args)


def parse_edit(args: str) -> tuple[str, list[tuple[str, str]]]:
    """(path, [(search, replace), ...]) of an ``edit`` call."""
    path, _, rest = args.partition("\n")
    if not path.strip():
        raise ChatFormatError("edit: the first line must be the file's path")
    blocks, lines, index = [], rest.split("\n"), 0
    while index < len(lines):
        if lines[index].strip() != SEARCH:
            if lines[index].strip():
                raise ChatFormatError(f"edit: expected {SEARCH!r}, got {lines[index][:60]!r}")
            index += 1
            continue
        try:
            divider = lines.index(DIVIDER, index + 1)
            end = lines.index(REPLACE, divider + 1)
        except ValueError:
            raise ChatFormatError(f"edit: a block needs {DIVIDER!r} and then {REPLACE!r} lines") from None
        blocks.append(("\n".join(lines[index + 1 : divider]), "\n".join(lines[divider + 1 : end])))
        index = end + 1
    if not blocks:
        raise ChatFormatError(f"edit: no {SEARCH} / {DIVIDER} / {REPLACE} block")
    return path.strip(), blocks


def format_edit(path: str, blocks: list[tuple[str, str]]) -> str:
    return path + "\n" + "\n".join(f"{SEARCH}\n{old}\n{DIVIDER}\n{new}\n{REPLACE}" for old, new in blocks)


def format_create(path: str, content: str) -> str:
    return f"{path}\n{content}"


def parse_create(args: str) -> tuple[str, str]:
    path, _, content = args.partition("\n")
    if not path.strip():
        raise ChatFormatError("create: the first line must be the file's path")
    return path.strip(), content

"""Policies: who writes the assistant turns of an episode.

- ``OpenAIPolicy``: any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, opencwm's own) through the
  ``openai`` client; messages go out with CWM's roles as they are (``tool: bash``).
- ``CompleterPolicy``: any ``opencwm.infer`` completer (a local checkpoint, a served model through
  ``/v1/completions``): each turn one completion of the conversation in CWM's chat format (primed with ``<think>``
  in reasoning mode) up to the end of the turn; ``forage run --policy local`` and ``eval swe`` use it. A
  conversation that fills the context, or a request the server refuses, ends the episode (recorded); a backend
  that cannot answer at all is ``PolicyUnavailable``.
- ``ScriptedPolicy``: replays given assistant turns (tests; ``read_script`` reads them from JSONL), then submits.
- ``InverseMutationPolicy``: undoes a mutate-fix bug with one ``edit`` (the check that validated tasks are
  solvable by an agent using the tools).
- ``OraclePolicy``: looks around briefly, applies the task's own fix with ``git apply`` and runs the failing
  tests, as SWE-bench validates its gold patches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from opencwm.chat import THINK_START, encode_messages, format_edit, format_tool_call
from opencwm.errors import CompleterUnavailable, RequestRefused, one_line
from opencwm.special_tokens import STOP_TOKENS


class PolicyUnavailable(RuntimeError):
    """The policy cannot answer at all (its endpoint is unreachable, refuses the credentials or has no such
    model): not an outcome of the episode, which is not recorded and is played again on a rerun."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Policy:
    name = "policy"

    def __call__(self, messages: list[dict]) -> Reply:
        raise NotImplementedError


class ScriptedPolicy(Policy):
    name = "scripted"

    def __init__(self, turns: list[str]):
        self.turns, self.index = list(turns), 0

    def __call__(self, messages: list[dict]) -> Reply:
        if self.index >= len(self.turns):
            return Reply(format_tool_call("submit"))
        self.index += 1
        return Reply(self.turns[self.index - 1])


def read_script(path) -> list[str]:
    """Assistant turns from a JSONL file, one per line: a JSON string (the turn's whole text) or an object
    ``{"tool": NAME, "args": TEXT}`` (one tool call, e.g. ``{"tool": "bash", "args": "pytest -q"}``). Raises
    ``ValueError`` with a one-line message naming the bad line."""
    from pathlib import Path

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    turns = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            turn = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(turn, dict) and isinstance(turn.get("tool"), str) and isinstance(turn.get("args", ""), str):
            turn = format_tool_call(turn["tool"], turn.get("args", ""))
        if not isinstance(turn, str):
            raise ValueError(f'{path}:{number}: expected a JSON string or {{"tool": NAME, "args": TEXT}}')
        turns.append(turn)
    return turns


def inverse_edits(bug_patch: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(path, [(broken text, original text)]) per file of a unified diff from the original to the broken tree."""
    files: list[tuple[str, list[tuple[str, str]]]] = []
    broken: list[str] = []
    original: list[str] = []

    def close_hunk():
        if files and (broken or original):
            files[-1][1].append(("\n".join(broken), "\n".join(original)))
        broken.clear()
        original.clear()

    for line in bug_patch.splitlines():
        if line.startswith("+++ "):
            files.append((line[6:] if line.startswith("+++ b/") else line[4:], []))
        elif line.startswith(("--- ", "diff ", "index ")) or line.startswith("@@"):
            close_hunk()
        elif files and line.startswith("+"):
            broken.append(line[1:])
        elif files and line.startswith("-"):
            original.append(line[1:])
        elif files and line.startswith(" "):
            broken.append(line[1:])
            original.append(line[1:])
    close_hunk()
    return files


class InverseMutationPolicy(Policy):
    name = "inverse"

    def __init__(self, task: dict):
        edits = inverse_edits(task["bug_patch"])
        turns = [format_tool_call("bash", "git status --short && git log --oneline -1")]
        turns += [format_tool_call("edit", format_edit(path, blocks)) for path, blocks in edits]
        self.script = ScriptedPolicy(turns)

    def __call__(self, messages: list[dict]) -> Reply:
        return self.script(messages)


class OraclePolicy(Policy):
    name = "oracle"

    def __init__(self, task: dict):
        tests = " ".join(f"'{t}'" for t in json.loads(task["FAIL_TO_PASS"])[:20])
        patch = task["patch"] if task["patch"].endswith("\n") else task["patch"] + "\n"
        self.script = ScriptedPolicy([
            format_tool_call("bash", "git status --short && ls"),
            format_tool_call("bash", f"git apply --whitespace=nowarn <<'OPENCWM_PATCH'\n{patch}OPENCWM_PATCH"),
            format_tool_call("bash", f"python -m pytest -q -p no:cacheprovider {tests} 2>&1 | tail -5"),
        ])

    def __call__(self, messages: list[dict]) -> Reply:
        return self.script(messages)


class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", temperature: float = 0.0,
                 max_tokens: int = 2048, timeout: float = 300, retries: int = 4):
        try:
            from openai import OpenAI
        except ImportError:
            raise RuntimeError("the openai policy needs the openai package: pip install 'opencwm[forage]'") from None
        # the client retries a failed connection with exponential backoff (0.5 s doubling, 8 s at most)
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=retries)
        self.base_url, self.model, self.temperature, self.max_tokens = base_url, model, temperature, max_tokens

    def __call__(self, messages: list[dict]) -> Reply:
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                temperature=self.temperature, max_tokens=self.max_tokens)
        except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:
            tries = self.client.max_retries + 1
            raise PolicyUnavailable(f"{self.base_url} (model {self.model}): {type(exc).__name__} after {tries} "
                                    f"tries: {one_line(str(exc), 200)}") from None
        usage = response.usage
        return Reply(response.choices[0].message.content or "", usage.prompt_tokens if usage else None,
                     usage.completion_tokens if usage else None)


class CompleterPolicy(Policy):
    def __init__(self, completer, *, name: str = "cwm", think: bool = True, max_tokens: int = 2048,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        self.completer, self.name, self.think = completer, name, think  # an opencwm.infer Completer
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        self.stop = [completer.tokenizer.token_id(token) for token in STOP_TOKENS]
        self.turns: list[tuple[list[int], list[int]]] = []  # (prompt ids, sampled ids) of every turn: RL learns them

    def __call__(self, messages: list[dict]) -> Reply:
        tokenizer = self.completer.tokenizer
        prompt = tokenizer.encode(encode_messages(messages, add_generation_prompt=True, think=self.think),
                                  allow_special=True)
        room = self.completer.context_length - len(prompt)
        if room < 1:
            raise ValueError(f"the conversation ({len(prompt)} tokens) fills the model's context")
        try:
            [tokens] = self.completer.complete(prompt, stop=self.stop, max_tokens=min(self.max_tokens, room),
                                               temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        except RequestRefused as exc:  # this request only (too long, say): the episode ends, recorded
            raise ValueError(str(exc)) from None
        except CompleterUnavailable as exc:  # no answer at all: the episode is played again on a rerun
            raise PolicyUnavailable(str(exc)) from None
        self.turns.append((prompt, list(tokens)))
        text = tokenizer.decode([t for t in tokens if t not in self.stop])
        return Reply(f"{THINK_START}\n{text}" if self.think else text, len(prompt), len(tokens))

"""The agent policy of the one completion interface: a local checkpoint or a served model plays forager episodes
(``opencwm forage run --policy local``, ``opencwm eval swe``) through a ``Completer``.

Each turn is one completion of the conversation so far in CWM's chat format (primed with ``<think>`` in reasoning
mode), up to the end of the turn. A conversation that fills the context, or a request the server refuses, ends the
episode (recorded as a policy error); a backend that cannot answer at all is ``PolicyUnavailable`` (the episode is
played again on a rerun).
"""

from __future__ import annotations

from opencwm.chat import THINK_START, encode_messages
from opencwm.forage.policies import Policy, PolicyUnavailable, Reply
from opencwm.infer.completer import Completer, CompleterUnavailable, RequestRefused
from opencwm.special_tokens import STOP_TOKENS


class CompleterPolicy(Policy):
    def __init__(self, completer: Completer, *, name: str = "cwm", think: bool = True, max_tokens: int = 2048,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        self.completer, self.name, self.think = completer, name, think
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        self.stop = []
        for token in STOP_TOKENS:
            try:
                self.stop.append(completer.tokenizer.token_id(token))
            except (KeyError, ValueError):
                pass

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
        text = tokenizer.decode([t for t in tokens if t not in self.stop])
        return Reply(f"{THINK_START}\n{text}" if self.think else text, len(prompt), len(tokens))

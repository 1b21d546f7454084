"""The one completion interface of opencwm's inference: a prompt of token ids in, ``n`` continuations out.

    completer = open_completer(model="runs/speedrun/sft/model")                   # local checkpoint
    completer = open_completer(model="cwm", base_url="http://localhost:8000/v1",   # a vLLM server
                               tokenizer="path/to/tokenizer.model")
    [tokens] = completer.complete(prompt_ids, stop=[frame_sep], max_tokens=256)

(``open_completer`` is in ``opencwm.infer.load``.)

A continuation ends at the first token of ``stop`` (included in it) or after ``max_tokens`` tokens; no other token
ends it (a model's end of text does only when it is in ``stop``), so both backends return the same tokens for the
same weights at temperature 0. Both read the checkpoint's own tokenizer (``tokenizer.json`` or CWM's tiktoken
``tokenizer.model``), so prompts are the token ids the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from opencwm.errors import CompleterUnavailable, RequestRefused
from opencwm.tokenizer import Tokenizer

__all__ = ["Completer", "CompleterUnavailable", "RequestRefused"]  # the backend's failures live in opencwm.errors


class Completer(Protocol):
    tokenizer: Tokenizer
    context_length: int  # the longest prompt plus continuation the backend accepts

    def complete(self, prompt: Sequence[int], *, stop: Sequence[int] = (), max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                 seed: int | None = None, on_token: Callable[[int], None] | None = None,
                 stop_texts: Sequence[str] = ()) -> list[list[int]]:
        """``n`` continuations of ``prompt``, each a list of token ids (ending with its stop token, if any);
        ``on_token`` is called with each token of the first as it arrives. ``stop_texts``: a continuation also ends
        once its text holds one of them (its tokens then run past it; callers cut the text)."""
        ...

    def complete_batch(self, prompts: Sequence[Sequence[int]], *, stop: Sequence[int] = (), max_tokens: int = 256,
                       temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                       seed: int | None = None, stop_texts: Sequence[str] = ()) -> list[list[list[int]]]:
        """``complete`` for many prompts at once (batched rows locally, concurrent requests to a server): for each
        prompt, its ``n`` continuations."""
        ...

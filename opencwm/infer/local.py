"""A checkpoint on this machine as a ``Completer``, with prefix reuse.

The completer keeps one KV cache and the token ids it holds. A new prompt that shares a prefix with them (the
neural debugger's next step: the previous prompt, the frame the model wrote and maybe a forced event token) only
prefills what is new; a prompt that shares less cuts the cache back to the common prefix (``KVCache.truncate``)
when the sliding-window rings still hold it, and prefills from scratch otherwise. ``n`` samples of one prompt
prefill it once and decode from copies of the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from opencwm.infer.completer import CompleterUnavailable
from opencwm.model.generate import Sampling, continue_sampling, generate
from opencwm.tokenizer import Tokenizer

PREFILL_CHUNK = 1024  # tokens per prefill step: bounds the attention scores' memory on long prompts
MIN_CACHE = 1024  # positions of the first cache; it doubles when a request needs more


class LocalCompleter:
    def __init__(self, model, tokenizer: Tokenizer, *, context_length: int | None = None, compile: bool = False,
                 reuse_prefix: bool = True, batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        limit = model.config.max_position_embeddings
        self.context_length = min(context_length or limit, limit)  # the cache grows up to this on demand
        self.compile = compile
        self.reuse_prefix = reuse_prefix
        self._cache = None
        self._tokens: list[int] = []  # what the cache holds
        self.prefilled = 0  # tokens prefilled so far (what prefix reuse saves shows here)
        self.batch_size = max(1, batch_size)  # rows generated together in ``complete_batch``

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, tokenizer: str | Path | None = None, device: str = "cpu",
                        dtype: str | None = None, **options) -> LocalCompleter:
        """An opencwm or Hugging Face CWM checkpoint directory (``config.json`` and safetensors weights)."""
        from opencwm.model import CWM
        from opencwm.model.hf import CheckpointError

        try:
            model = CWM.from_pretrained(path, device=device, dtype=getattr(torch, dtype) if dtype else None)
            words = Tokenizer.of_checkpoint(path, tokenizer)
        except (CheckpointError, OSError, ValueError) as exc:
            raise CompleterUnavailable(f"{path}: cannot load the checkpoint ({exc})") from None
        return cls(model, words, **options)

    def _prefill(self, prompt: list[int], room: int) -> torch.Tensor:
        """Bring the cache to ``prompt`` (reusing what it shares with it), with ``room`` more positions after it;
        the logits after its last token."""
        model = self.model
        keep = 0
        needed = min(self.context_length, len(prompt) + room)
        if self._cache is not None and self._cache.max_length < needed:
            self._cache = None  # a bigger one, below (the cache grows by doubling: a few prefills in a session)
        if self.reuse_prefix and self._cache is not None:
            limit = min(len(self._tokens), len(prompt) - 1)  # at least one token is fed: its logits are needed
            while keep < limit and self._tokens[keep] == prompt[keep]:
                keep += 1
            if not self._cache.truncate(keep):
                keep = 0
        if keep == 0 and (self._cache is None or not self._cache.truncate(0)):
            size = max(MIN_CACHE, 1 << (needed - 1).bit_length())
            self._cache = model.new_cache(1, min(size, self.context_length))
        self._tokens = list(prompt[:keep])
        logits = None
        for start in range(keep, len(prompt), PREFILL_CHUNK):
            chunk = prompt[start : start + PREFILL_CHUNK]
            logits = model(torch.tensor([chunk], device=model.device), cache=self._cache)[:, -1]
            self._tokens += chunk
            self.prefilled += len(chunk)
        return logits

    @torch.no_grad()
    def complete(self, prompt: Sequence[int], *, stop: Sequence[int] = (), max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                 seed: int | None = None, on_token=None, stop_texts: Sequence[str] = ()) -> list[list[int]]:
        prompt = list(prompt)
        if not prompt:
            raise ValueError("the prompt needs at least one token")
        if len(prompt) >= self.context_length:
            raise ValueError(f"a prompt of {len(prompt)} tokens leaves no room in a context of "
                             f"{self.context_length} tokens")
        last = self._prefill(prompt, max_tokens)
        sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                            stop_tokens=tuple(stop), seed=seed, compile=self.compile and n == 1)
        if n == 1:
            (tokens,) = continue_sampling(self.model, self._cache, last, sampling, first_position=len(prompt),
                                          on_token=on_token, finished=self._holds(stop_texts))
            self._tokens += tokens[:-1]  # the cache now holds every new token but the last
            return [tokens]
        cache = self._cache.expand(n)
        return continue_sampling(self.model, cache, last.expand(n, -1), sampling, first_position=len(prompt),
                                 on_token=on_token, finished=self._holds(stop_texts))

    @torch.no_grad()
    def complete_batch(self, prompts: Sequence[Sequence[int]], *, stop: Sequence[int] = (), max_tokens: int = 256,
                       temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                       seed: int | None = None, stop_texts: Sequence[str] = ()) -> list[list[list[int]]]:
        """``n`` continuations of each prompt, ``batch_size`` rows generated together (rows of similar length in
        the same batch); a batch's seed is ``seed`` plus its first row's place."""
        rows = [list(prompt) for prompt in prompts for _ in range(n)]
        if any(not row or len(row) >= self.context_length for row in rows):
            raise ValueError(f"every prompt needs at least one token and fewer than {self.context_length}")
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
        new: list[list[int]] = [[] for _ in rows]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            room = min(max_tokens, self.context_length - max(len(rows[r]) for r in chunk))
            sampling = Sampling(max_new_tokens=room, temperature=temperature, top_p=top_p, stop_tokens=tuple(stop),
                                seed=None if seed is None else seed + start)
            for r, tokens in zip(chunk, generate(self.model, [rows[r] for r in chunk], sampling,
                                                 finished=self._holds(stop_texts))):
                new[r] = tokens
        return [new[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _holds(self, stop_texts: Sequence[str]):
        """Whether new tokens' text holds a stop text (the last 32 tokens are read: a stop text is short)."""
        if not stop_texts:
            return None
        decode = self.tokenizer.decode
        return lambda tokens: any(text in decode(tokens[-32:]) for text in stop_texts)

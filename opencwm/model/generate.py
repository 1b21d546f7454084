"""Batched generation with the KV cache: greedy, temperature and nucleus (top-p) sampling, stop tokens.

Good enough for evaluation and the neural debugger; the serving engine builds on the same cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opencwm.model.transformer import CWM


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    compile: bool = False  # torch.compile the decoding step (worth it for long generations)
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int | None = None


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (batch,) from last-position logits (batch, vocab)."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p  # keep the smallest set above top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: CWM, prompts: list[list[int]], sampling: Sampling | None = None,
             finished: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Continue each prompt; returns the new tokens of each (the stop token included when one was produced).
    ``finished(new_tokens)``: a row also ends when it says so (e.g. when its text holds a stop string)."""
    sampling = sampling or Sampling()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.device
    batch = len(prompts)
    longest = max(len(p) for p in prompts)
    needed = longest + sampling.max_new_tokens
    if sampling.compile:  # a few cache sizes, so that the compiled step is reused across calls
        needed = 1 << (needed - 1).bit_length()
    cache = model.new_cache(batch, min(needed, model.config.max_position_embeddings))
    ids = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for b, prompt in enumerate(prompts):
        ids[b, : len(prompt)] = torch.tensor(prompt, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    logits = model(ids, cache=cache, lengths=lengths)
    last = logits[torch.arange(batch, device=device), lengths - 1]
    return continue_sampling(model, cache, last, sampling, first_position=longest, finished=finished)


def continue_sampling(model: CWM, cache, last: torch.Tensor, sampling: Sampling, *, first_position: int,
                      on_token=None, finished: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Sample from ``last`` (batch, vocab), the logits after each sequence in ``cache``, feeding every sampled
    token back through the cache, until each sequence produced a stop token or ``max_new_tokens``. The last
    sampled token is never fed, so the cache ends holding the prompt and every new token but the last (what a
    caller that extends the same text again reuses). ``first_position``: where the first new token goes in the
    longest sequence (generation ends at the cache's end). ``on_token(id)``: called with each new token of the
    first sequence as it is sampled (streaming). ``finished(tokens)``: a sequence also ends when it returns True
    for its new tokens so far."""
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=last.device).manual_seed(sampling.seed)
    batch = last.shape[0]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    stops = set(sampling.stop_tokens)
    step = compiled_decode(model) if sampling.compile else model.decode
    for count in range(1, sampling.max_new_tokens + 1):
        token = sample_next(last, sampling, generator)
        for b, value in enumerate(token.tolist()):
            if not done[b]:
                outputs[b].append(value)
                done[b] = value in stops or (finished is not None and finished(outputs[b]))
                if b == 0 and on_token is not None:
                    on_token(value)
        if all(done) or count == sampling.max_new_tokens or first_position + count > cache.max_length:
            break
        last = step(token, cache)
    return outputs


def compiled_decode(model: CWM):
    """``model.decode`` compiled once per model (the cache's buffers are static, so the graph is reused)."""
    compiled = getattr(model, "_compiled_decode", None)
    if compiled is None:
        compiled = model._compiled_decode = torch.compile(model.decode, dynamic=False)
    return compiled

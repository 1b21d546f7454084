"""Packing documents into fixed-length training sequences, from a weighted mixture of sources, as a stream whose
state can be saved and restored exactly.

A document is its token ids plus a per-token loss mask (e.g. SFT: only assistant tokens are learned). Packed
sequences carry ``document_ids`` so that attention stays inside each document (document-causal masking), and
``labels`` with -100 wherever no loss is taken: masked tokens, and the first token of every document (nothing
before it in its own document predicts it). A document longer than a sequence continues in the next sequence as
a new segment.

Mixture weights are shares of tokens: a source's documents are drawn with probability proportional to its weight
divided by its mean document length, so a source of long files does not crowd out one of short traces.

    stream = PackedStream({"code": code_docs, "traces": trace_docs}, {"code": 0.3, "traces": 0.7},
                          seq_len=2048, seed=0)
    batch = stream.next_batch(8)            # {"input_ids", "labels", "document_ids"} int64 tensors (8, 2048)
    state = stream.state_dict()             # save with the checkpoint; load_state_dict() resumes exactly
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from opencwm.special_tokens import IGNORE


def next_token_labels(input_ids):
    """Labels for rows of ``input_ids`` (a tensor) that are each one document: the next token, ``IGNORE`` after
    the last (what the packer gives a row holding one document, for benchmarks and tools on plain tensors)."""
    import torch

    return torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], IGNORE)], dim=1)


@dataclass
class Document:
    tokens: list[int]
    loss_mask: list[bool] | None = None  # None: learn every token

    def __post_init__(self) -> None:
        if self.loss_mask is not None and len(self.loss_mask) != len(self.tokens):
            raise ValueError("loss_mask must have one entry per token")


class PackedStream:
    """Endless packed sequences from ``sources`` (name -> indexable sequence of Documents), mixed by ``weights``
    (shares of tokens).

    Each source is read in a seeded random order, epoch after epoch; the mixture draws which source supplies the
    next document. Everything that decides the future (random state, positions, the partly filled buffer) is in
    ``state_dict()``.
    """

    def __init__(self, sources: dict[str, Sequence[Document]], weights: dict[str, float], seq_len: int,
                 seed: int = 0):
        if set(weights) - set(sources):
            raise ValueError(f"weights for unknown sources: {sorted(set(weights) - set(sources))}")
        self.sources = {name: docs for name, docs in sources.items() if weights.get(name, 0) > 0}
        if not self.sources or any(len(docs) == 0 for docs in self.sources.values()):
            raise ValueError("every weighted source needs at least one document")
        if any(w < 0 for w in weights.values()):
            raise ValueError("mixture weights must be non-negative")
        self.names = sorted(self.sources)
        self.weights = [weights[name] for name in self.names]  # shares of tokens
        mean_length = {name: max(1.0, sum(len(d.tokens) for d in docs) / len(docs))
                       for name, docs in self.sources.items()}
        self._draw = [weights[name] / mean_length[name] for name in self.names]  # per-document draw weights
        self.seq_len = seq_len
        self.seed = seed
        self._rng = random.Random(seed)
        self._cursor = {name: (0, 0) for name in self.names}  # (epoch, index in that epoch's order)
        self._orders: dict[tuple[str, int], list[int]] = {}
        self._buffer: list[tuple[int, bool, int]] = []  # (token, learn it, segment number)
        self._segment = 0
        self.tokens_by_source = dict.fromkeys(self.names, 0)

    def _order(self, name: str, epoch: int) -> list[int]:
        key = (name, epoch)
        if key not in self._orders:
            order = list(range(len(self.sources[name])))
            random.Random(f"{self.seed}:{name}:{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != name}  # keep one epoch per source
            self._orders[key] = order
        return self._orders[key]

    def _next_document(self) -> tuple[str, Document]:
        name = self._rng.choices(self.names, weights=self._draw)[0]
        epoch, index = self._cursor[name]
        document = self.sources[name][self._order(name, epoch)[index]]
        index += 1
        self._cursor[name] = (epoch + 1, 0) if index == len(self.sources[name]) else (epoch, index)
        return name, document

    def next_sequence(self) -> dict[str, list[int]]:
        while len(self._buffer) < self.seq_len:
            name, document = self._next_document()
            mask = document.loss_mask or [True] * len(document.tokens)
            self._segment += 1
            self._buffer.extend((t, m, self._segment) for t, m in zip(document.tokens, mask))
            self.tokens_by_source[name] += len(document.tokens)
        chunk, self._buffer = self._buffer[: self.seq_len], self._buffer[self.seq_len :]
        segments: dict[int, int] = {}
        input_ids, labels, document_ids = [], [], []
        for position, (token, _, segment) in enumerate(chunk):
            input_ids.append(token)
            document_ids.append(segments.setdefault(segment, len(segments)))
            # labels[t] is the token at t + 1, when it is in the same segment and is learned
            if position + 1 < len(chunk):
                next_token, next_learn, next_segment = chunk[position + 1]
            else:
                next_token, next_learn, next_segment = self._buffer[0] if self._buffer else (0, False, -1)
            labels.append(next_token if next_segment == segment and next_learn else IGNORE)
        return {"input_ids": input_ids, "labels": labels, "document_ids": document_ids}

    def next_batch(self, batch_size: int):
        import torch

        rows = [self.next_sequence() for _ in range(batch_size)]
        return {key: torch.tensor([row[key] for row in rows], dtype=torch.long) for key in rows[0]}

    # -- checkpointing ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "seed": self.seed, "rng": self._rng.getstate(), "cursor": dict(self._cursor),
            "buffer": list(self._buffer), "segment": self._segment, "tokens_by_source": dict(self.tokens_by_source),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this stream has seed {self.seed}")
        rng = state["rng"]
        self._rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self._cursor = {name: tuple(value) for name, value in state["cursor"].items()}
        self._buffer = [tuple(item) for item in state["buffer"]]
        self._segment = state["segment"]
        self.tokens_by_source = dict(state["tokens_by_source"])

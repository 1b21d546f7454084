"""Attention for fp32 training on a CPU: query chunks against the keys they can reach, with a written-out backward.

The queries are cut into chunks of ``chunk`` positions; each chunk's scores cover only the keys its causal (and
window) rule can reach, so no work is spent above the diagonal block. The query heads that share a key head are
stacked into one matrix (GQA without repeating keys), so every product is one batched GEMM. The forward keeps
each chunk's probabilities for the backward, which is the textbook softmax-attention gradient in four GEMMs per
chunk.

It is a custom operator (``opencwm::chunked_attention``) with its own autograd formula, so ``torch.compile``
treats it as one opaque call: Inductor's generated CPU kernels for the same computation (the masks built from
index arithmetic, the GQA reshapes of sliced queries) ran the forward two times slower than these eager ATen calls
(2 AMD EPYC cores, the ``tiny`` preset's training step).

    out = chunked_attention(q, k, v, window=None, document_ids=None, chunk=128)  # (batch, heads, time, head_dim)
"""

from __future__ import annotations

import torch
from torch import Tensor

from opencwm.model.masks import allowed


def _chunks(time: int, chunk: int, window: int | None):
    """(start, end, first): each chunk of queries ``start..end-1`` and the first key it can reach."""
    for start in range(0, time, chunk):
        yield start, min(start + chunk, time), 0 if window is None else max(0, start - window + 1)


def _stacked(x: Tensor, kv_heads: int) -> Tensor:
    """(batch, heads, n, dim) -> (batch, kv_heads, groups * n, dim): the query heads of one key head stacked."""
    batch, heads, n, dim = x.shape
    return x.reshape(batch, kv_heads, (heads // kv_heads) * n, dim)


def _masked_scores(qc: Tensor, k: Tensor, start: int, end: int, first: int, window: int | None,
                   document_ids: Tensor | None) -> Tensor:
    """Scores of the stacked, pre-scaled query chunk against keys ``first..end-1``; unseen keys at -inf."""
    batch, kv_heads = qc.shape[:2]
    scores = qc @ k[:, :, first:end].transpose(-1, -2)
    by_group = scores.view(batch, kv_heads, -1, end - start, end - first)  # (.., groups, queries, keys)
    if document_ids is None and window is None:  # only the diagonal block hides keys: those after each query
        by_group = by_group[..., start - first:]
        first = start
    q_pos = torch.arange(start, end, device=qc.device)[None]
    k_pos = torch.arange(first, end, device=qc.device)[None]
    docs = (document_ids[:, start:end], document_ids[:, first:end]) if document_ids is not None else (None, None)
    by_group.masked_fill_(~allowed(q_pos, k_pos, window, *docs)[:, None, None], float("-inf"))
    return scores


@torch.library.custom_op("opencwm::chunked_attention", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor, document_ids: Tensor | None, window: int | None,
             chunk: int) -> tuple[Tensor, list[Tensor]]:
    batch, heads, time, dim = q.shape
    kv_heads = k.shape[1]
    out = torch.empty(batch, heads, time, dim, dtype=q.dtype, device=q.device)
    probabilities = []
    for start, end, first in _chunks(time, chunk, window):
        qc = _stacked(q[:, :, start:end] * dim**-0.5, kv_heads)
        p = torch.softmax(_masked_scores(qc, k, start, end, first, window, document_ids), dim=-1)
        out[:, :, start:end] = (p @ v[:, :, first:end]).view(batch, heads, end - start, dim)
        probabilities.append(p)
    return out, probabilities


@_forward.register_fake
def _(q, k, v, document_ids, window, chunk):
    batch, heads, time, _ = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    return torch.empty_like(q, memory_format=torch.contiguous_format), [
        q.new_empty(batch, kv_heads, groups * (end - start), end - first)
        for start, end, first in _chunks(time, chunk, window)]


@torch.library.custom_op("opencwm::chunked_attention_backward", mutates_args=())
def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, probabilities: list[Tensor], window: int | None,
              chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    batch, heads, time, dim = q.shape
    kv_heads = k.shape[1]
    scale = dim**-0.5
    grad_q = torch.empty(batch, heads, time, dim, dtype=q.dtype, device=q.device)
    grad_k = torch.zeros(batch * kv_heads, time, dim, dtype=k.dtype, device=k.device)
    grad_v = torch.zeros(batch * kv_heads, time, dim, dtype=v.dtype, device=v.device)
    for (start, end, first), p in zip(_chunks(time, chunk, window), probabilities):
        rows = p.shape[2]
        go = _stacked(grad_out[:, :, start:end].contiguous(), kv_heads)
        keys, values = k[:, :, first:end], v[:, :, first:end]
        grad_v[:, first:end] += torch.bmm(p.view(-1, rows, end - first).transpose(1, 2), go.view(-1, rows, dim))
        grad_scores = torch._softmax_backward_data(go @ values.transpose(-1, -2), p, -1, p.dtype)
        grad_q[:, :, start:end] = (grad_scores @ keys).mul_(scale).view(batch, heads, end - start, dim)
        qc = _stacked(q[:, :, start:end] * scale, kv_heads)
        grad_k[:, first:end] += torch.bmm(grad_scores.view(-1, rows, end - first).transpose(1, 2),
                                          qc.view(-1, rows, dim))
    return grad_q, grad_k.view_as(k), grad_v.view_as(v)


@_backward.register_fake
def _(grad_out, q, k, v, probabilities, window, chunk):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, _, window, chunk = inputs
    ctx.save_for_backward(q, k, v, *output[1])
    ctx.window, ctx.chunk = window, chunk


def _autograd_backward(ctx, grad_out, _grad_probabilities):
    q, k, v, *probabilities = ctx.saved_tensors
    grad_q, grad_k, grad_v = _backward(grad_out, q, k, v, probabilities, ctx.window, ctx.chunk)
    return grad_q, grad_k, grad_v, None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int | None = None,
                      document_ids: Tensor | None = None, chunk: int = 128) -> Tensor:
    """Causal attention of (batch, heads, time, dim) queries over (batch, kv_heads, time, dim) keys and values,
    within ``window`` keys (local layers) and within each document when ``document_ids`` (batch, time) are given."""
    if window is not None and window >= q.shape[2]:
        window = None
    return _forward(q, k.contiguous(), v.contiguous(), document_ids, window, chunk)[0]

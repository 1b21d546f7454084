"""Attention with CWM's masks: causal, document-causal for packed sequences, and a sliding window on local layers.

A query at position i may see key j when ``j <= i``, both belong to the same document (when document ids are
given), and, on local layers, ``i - j < window``. Backends, all computing the same function:

- ``dense``: the reference, a full (T, T) boolean mask and an explicit softmax in fp32; used by the tests.
- ``sdpa``: PyTorch's scaled_dot_product_attention. Global layers use the causal kernel (or a document mask);
  local layers run query chunks against only the keys their window can reach, so time and memory grow linearly
  with the sequence length instead of quadratically. fp32 training on a CPU with sequences of up to
  ``BLOCKED_MAX_TIME`` tokens takes the same chunks through :mod:`opencwm.model.chunked_attention` instead (GEMMs
  and a softmax with a written-out backward; the chunks skip the keys the causal mask hides): at 512 tokens its
  forward and backward take less time than the fused CPU kernel's (2 AMD EPYC cores), and past ~1k tokens it
  stops paying off, where its saved probabilities also grow as T². Not measured under bf16, so not used there.
- ``flex``: FlexAttention with a block mask (CUDA), compiled; the default for training on CUDA.

Tensors are (batch, heads, time, head_dim); keys and values have ``num_key_value_heads`` heads (GQA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opencwm.model.masks import allowed

BACKENDS = ("dense", "sdpa", "flex")


def default_backend(device: torch.device, *, training: bool = True) -> str:
    """FlexAttention for training on CUDA, whose packed batches all have one shape; SDPA elsewhere, and for
    inference, whose lengths change from call to call: compiled FlexAttention is specialised to one length, and
    past the recompile limit it would run uncompiled, materialising the whole score matrix."""
    return "flex" if device.type == "cuda" and training else "sdpa"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def dense_attention(q, k, v, *, window=None, document_ids=None, mask=None) -> torch.Tensor:
    """Reference attention. ``mask`` (batch, Tq, Tk) overrides the positional rules (used with a KV cache)."""
    batch, heads, tq, _ = q.shape
    if mask is None:
        pos = torch.arange(tq, device=q.device).expand(batch, tq)
        mask = allowed(pos, pos, window, document_ids, document_ids)
    groups = heads // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query that sees nothing (padding) gets zeros
    return (weights @ v.float()).to(q.dtype)


def _sdpa(q, k, v, mask=None, causal=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None],
                                          is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


BLOCKED_MAX_TIME = 1024  # the longest sequence that CPU training runs through chunked_attention (measured: see above)
BLOCKED_CHUNK = 128


def sdpa_attention(q, k, v, *, window=None, document_ids=None, mask=None, chunk: int | None = None,
                   blocked: bool | None = None):
    """``blocked``: force (True) or forbid (False) :func:`chunked_attention`; None chooses it for fp32 CPU training
    on short sequences."""
    batch, _, t, _ = q.shape
    if mask is not None:
        return _sdpa(q, k, v, mask)
    if blocked is None:
        blocked = (q.device.type == "cpu" and q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                   and q.requires_grad and torch.is_grad_enabled() and t <= BLOCKED_MAX_TIME)
    if window is not None and window >= t:
        window = None
    if not blocked and window is None:
        if document_ids is None:
            return _sdpa(q, k, v, causal=True)
        pos = torch.arange(t, device=q.device).expand(batch, t)
        return _sdpa(q, k, v, allowed(pos, pos, window, document_ids, document_ids))
    if blocked:
        from opencwm.model.chunked_attention import chunked_attention

        return chunked_attention(q, k, v, window=window, document_ids=document_ids, chunk=chunk or BLOCKED_CHUNK)
    # Banded: each chunk of queries attends to the keys its window reaches (at most chunk + window - 1 of them).
    chunk = chunk or window
    outputs = []
    positions = torch.arange(t, device=q.device)
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        first = max(0, start - window + 1)
        q_pos = positions[start:end].expand(batch, -1)
        k_pos = positions[first:end].expand(batch, -1)
        docs = (document_ids[:, start:end], document_ids[:, first:end]) if document_ids is not None else (None, None)
        band = allowed(q_pos, k_pos, window, *docs)
        outputs.append(_sdpa(q[:, :, start:end], k[:, :, first:end], v[:, :, first:end], band))
    return torch.cat(outputs, dim=2)


_compiled_flex = None


def flex_block_mask(batch: int, time: int, window: int | None, document_ids: torch.Tensor | None,
                    device: torch.device):
    """FlexAttention's block mask for CWM's rules (causal, window, documents). Building it costs a pass over the
    (T, T) grid, so the model builds one per kind of layer per forward and the layers share it."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids

    def mask_mod(b, h, q_idx, kv_idx):
        ok = kv_idx <= q_idx
        if window is not None:
            ok = ok & (q_idx - kv_idx < window)
        if docs is not None:
            ok = ok & (docs[b, q_idx] == docs[b, kv_idx])
        return ok

    # On CUDA the mask is built by a compiled kernel (eager evaluation of the (B, T, T) grid took milliseconds per
    # layer kind at 8k tokens); on CPU eagerly, which saves a compile where it would not pay.
    return create_block_mask(mask_mod, B=batch if docs is not None else None, H=None, Q_LEN=time, KV_LEN=time,
                             device=device, _compile=torch.device(device).type == "cuda")


def flex_attention(q, k, v, *, window=None, document_ids=None, mask=None, block_mask=None):
    """FlexAttention (compiled; skips fully masked blocks) with ``block_mask`` from :func:`flex_block_mask`, built
    here when not given; falls back to SDPA for explicit masks."""
    global _compiled_flex
    if mask is not None:
        return _sdpa(q, k, v, mask)
    from torch.nn.attention.flex_attention import flex_attention as flex

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex, dynamic=False)
    if block_mask is None:
        block_mask = flex_block_mask(q.shape[0], q.shape[2], window, document_ids, q.device)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def attention(q, k, v, *, backend: str, window=None, document_ids=None, mask=None, block_mask=None) -> torch.Tensor:
    if backend == "sdpa":
        return sdpa_attention(q, k, v, window=window, document_ids=document_ids, mask=mask)
    if backend == "dense":
        return dense_attention(q, k, v, window=window, document_ids=document_ids, mask=mask)
    if backend == "flex":
        return flex_attention(q, k, v, window=window, document_ids=document_ids, mask=mask, block_mask=block_mask)
    raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")

"""CWM's attention mask rule, the one place it is written: a query at position i may see key j when ``j <= i``,
both belong to the same document (when document ids are given) and, on local layers, ``i - j < window``. Every
attention backend, the chunked CPU kernel and the KV cache build their masks from it."""

from __future__ import annotations

import torch


def allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, q_doc: torch.Tensor | None = None,
            k_doc: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (batch, Tq, Tk) mask from positions (batch, Tq) / (batch, Tk) and optional document ids."""
    ok = k_pos[:, None, :] <= q_pos[:, :, None]
    if window is not None:
        ok &= (q_pos[:, :, None] - k_pos[:, None, :]) < window
    if q_doc is not None:  # (not in place: positions may be shared by the batch, one row for all)
        ok = ok & (q_doc[:, :, None] == k_doc[:, None, :])
    return ok

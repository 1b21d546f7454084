"""Static KV cache: global layers keep every position, local layers a ring buffer of ``sliding_window`` slots.

Each slot remembers the position it holds (-1 when empty), so attention over the cache needs no assumption about
order: a query at position p may see a slot holding position s when ``0 <= s <= p`` and, on local layers,
``p - s < window``. Sequences in a batch have their own lengths (right-padded prompts), and a local layer's memory
stays capped at the window however long the context grows.
"""

from __future__ import annotations

import torch

from opencwm.model.attention import allowed
from opencwm.model.config import FULL, CwmConfig


class KVCache:
    def __init__(self, config: CwmConfig, batch: int, max_length: int, *, device=None, dtype=torch.float32):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_position_embeddings "
                             f"{config.max_position_embeddings}")
        self.config = config
        self.max_length = max_length
        self.windows: list[int | None] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slot_positions: list[torch.Tensor] = []
        shape = (batch, config.num_key_value_heads, 0, config.head_dim)
        for kind in config.layer_types:
            window = None if kind == FULL else config.sliding_window
            size = max_length if window is None else min(window, max_length)
            self.windows.append(window)
            self.keys.append(torch.zeros((*shape[:2], size, shape[3]), device=device, dtype=dtype))
            self.values.append(torch.zeros((*shape[:2], size, shape[3]), device=device, dtype=dtype))
            self.slot_positions.append(torch.full((batch, size), -1, device=device, dtype=torch.long))
        self.lengths = torch.zeros(batch, device=device, dtype=torch.long)

    def bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def attend_inputs(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor,
                      valid: torch.Tensor):
        """Keys, values and the (batch, Tq, Tk) mask for this step's queries: the cache as it was before this
        step, followed by this step's own keys."""
        window = self.windows[layer]
        keys = torch.cat([self.keys[layer], k_new.to(self.keys[layer].dtype)], dim=2)
        values = torch.cat([self.values[layer], v_new.to(self.values[layer].dtype)], dim=2)
        new_positions = positions.masked_fill(~valid, -1)
        slot_positions = torch.cat([self.slot_positions[layer], new_positions], dim=1)
        mask = allowed(positions, slot_positions, window) & (slot_positions >= 0)[:, None, :]
        # A padding query sees only itself, so that no row of the mask is empty.
        steps = positions.shape[1]
        eye = torch.eye(steps, dtype=torch.bool, device=positions.device)
        mask[:, :, -steps:] |= eye & ~valid[:, :, None]
        return keys.to(k_new.dtype), values.to(v_new.dtype), mask

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor) -> None:
        size = self.keys[layer].shape[2]
        ring = self.windows[layer] is not None
        for b in range(positions.shape[0]):
            pos = positions[b][valid[b]]
            if pos.numel() == 0:
                continue
            if pos.max() >= self.max_length:
                raise ValueError(f"position {int(pos.max())} is past the cache's max_length {self.max_length}")
            keep = pos > pos.max() - size  # a ring keeps only the newest `size` positions
            index = torch.nonzero(valid[b]).squeeze(1)[keep]
            slots = pos[keep] % size if ring else pos[keep]
            self.keys[layer][b, :, slots] = k_new[b, :, index].to(self.keys[layer].dtype)
            self.values[layer][b, :, slots] = v_new[b, :, index].to(self.values[layer].dtype)
            self.slot_positions[layer][b, slots] = pos[keep]

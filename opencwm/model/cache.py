"""Static KV cache: global layers keep every position, local layers a ring buffer of ``sliding_window`` slots.

Each slot remembers the position it holds (-1 when empty), so attention over the cache needs no assumption about
order: a query at position p may see a slot holding position s when ``0 <= s <= p`` and, on local layers,
``p - s < window``. All layers of one kind (global, or local with one window) write the same positions, so slot
positions and masks are computed once per step and kind, not per layer. Sequences in a batch have their own
lengths (right-padded prompts), and a local layer's memory stays capped at the window however long the context.

A cache can be cut back to a shorter prefix (``truncate``: the neural debugger steps back, or a new prompt shares
only part of the last one) unless a ring has already overwritten positions the prefix needs, and copied into a
batch of identical sequences (``expand``: several samples of one prompt, prefilled once).

Two ways through a step: decoding one token writes it into its slot first and attends over the static buffers
in place (no copies); a multi-token step (prefill) attends over the cache as it was plus its own keys, then
writes (a ring buffer cannot take several new tokens before they are attended to); it attends only to the slots
written so far, so a short prefill after a long context costs what the context holds, not what the cache could.
"""

from __future__ import annotations

import torch

from opencwm.model.config import FULL, CwmConfig
from opencwm.model.masks import allowed


class KVCache:
    def __init__(self, config: CwmConfig, batch: int, max_length: int, *, device=None, dtype=torch.float32):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_position_embeddings "
                             f"{config.max_position_embeddings}")
        self.config = config
        self.max_length = max_length
        self.windows: list[int | None] = [None if t == FULL else config.sliding_window for t in config.layer_types]
        self.sizes = {w: max_length if w is None else min(w, max_length) for w in set(self.windows)}
        shape = (batch, config.num_key_value_heads)
        self.keys = [torch.zeros(*shape, self.sizes[w], config.head_dim, device=device, dtype=dtype)
                     for w in self.windows]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.slot_positions = {w: torch.full((batch, size), -1, device=device, dtype=torch.long)
                               for w, size in self.sizes.items()}
        self.lengths = torch.zeros(batch, device=device, dtype=torch.long)
        self._step: dict = {}

    def truncate(self, length: int) -> bool:
        """Forget every position from ``length`` on, in every sequence; False (and nothing changed) when a ring
        buffer has already overwritten a position below ``length`` that the shorter prefix would need."""
        current = int(self.lengths.max())
        if length > current or length < 0:
            raise ValueError(f"cannot truncate a cache of {current} positions to {length}")
        if length == current:
            return True
        if length and any(current > size for size in self.sizes.values()):  # a wrapped ring lost its oldest
            return False
        for slot_positions in self.slot_positions.values():
            slot_positions.masked_fill_(slot_positions >= length, -1)
        self.lengths.clamp_(max=length)
        return True

    def expand(self, batch: int) -> KVCache:
        """A new cache of ``batch`` copies of this cache's single sequence."""
        if self.lengths.shape[0] != 1:
            raise ValueError("only a cache of one sequence can be expanded")
        copy = KVCache.__new__(KVCache)
        copy.__dict__.update(self.__dict__)
        copy.keys = [k.expand(batch, -1, -1, -1).clone() for k in self.keys]
        copy.values = [v.expand(batch, -1, -1, -1).clone() for v in self.values]
        copy.slot_positions = {w: p.expand(batch, -1).clone() for w, p in self.slot_positions.items()}
        copy.lengths = self.lengths.expand(batch).clone()
        copy._step = {}
        return copy

    def bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def begin_step(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Called once per forward pass, before the layers: slots and masks of this step for every kind."""
        last = int(positions.masked_fill(~valid, -1).max())
        if last >= self.max_length:
            raise ValueError(f"position {last} is past the cache's max_length {self.max_length}")
        batch, steps = positions.shape
        rows = torch.arange(batch, device=positions.device)
        self._step = {"positions": positions, "valid": valid, "decode": steps == 1, "all_valid": bool(valid.all())}
        for window, size in self.sizes.items():
            slot_positions = self.slot_positions[window]
            if steps == 1:
                slots = positions[:, 0] % size
                updated = slot_positions.clone()
                updated[rows[valid[:, 0]], slots[valid[:, 0]]] = positions[valid[:, 0], 0]
                mask = allowed(positions, updated, window) & (updated >= 0)[:, None, :]
                self._step[window] = (slots, mask)
                self.slot_positions[window] = updated
            else:  # the cache's slots written so far (the buffers fill from slot 0), then the new keys
                seen = min(size, int(self.lengths.max()))
                new_positions = positions.masked_fill(~valid, -1)
                keys_positions = torch.cat([slot_positions[:, :seen], new_positions], dim=1)
                mask = allowed(positions, keys_positions, window) & (keys_positions >= 0)[:, None, :]
                mask[:, :, -steps:] |= torch.eye(steps, dtype=torch.bool, device=positions.device) & ~valid[:, :, None]
                self._step[window] = (None, mask)

    def begin_decode(self, positions: torch.Tensor) -> None:
        """``begin_step`` for one new token in every sequence. Compiled, it runs without host synchronisation (the
        caller keeps positions below ``max_length``), so a whole decoding step is one graph over the static
        buffers; eagerly, attention covers only the slots written so far (the buffers fill from slot 0), so a
        step costs what its context holds, not what the cache could hold."""
        rows = torch.arange(positions.shape[0], device=positions.device)
        written = None if torch.compiler.is_compiling() else int(positions.max()) + 1
        self._step = {"positions": positions, "decode": True, "all_valid": True}
        for window, size in self.sizes.items():
            slots = positions[:, 0] % size
            updated = self.slot_positions[window].clone()
            updated[rows, slots] = positions[:, 0]
            seen = updated if written is None else updated[:, : min(size, written)]
            self._step[window] = (slots, allowed(positions, seen, window) & (seen >= 0)[:, None, :])
            self.slot_positions[window] = updated

    def attend_inputs(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Keys, values and the (batch, Tq, Tk) mask for this step's queries at ``layer``."""
        window = self.windows[layer]
        slots, mask = self._step[window]
        if self._step["decode"]:
            rows = torch.arange(k_new.shape[0], device=k_new.device)
            if self._step["all_valid"]:  # the usual case: shapes stay static (friendly to torch.compile)
                self.keys[layer][rows, :, slots] = k_new[:, :, 0].to(self.keys[layer].dtype)
                self.values[layer][rows, :, slots] = v_new[:, :, 0].to(self.values[layer].dtype)
            else:
                valid = self._step["valid"][:, 0]
                self.keys[layer][rows[valid], :, slots[valid]] = k_new[valid, :, 0].to(self.keys[layer].dtype)
                self.values[layer][rows[valid], :, slots[valid]] = v_new[valid, :, 0].to(self.values[layer].dtype)
            seen = mask.shape[-1]  # the slots this step attends to (fewer than the buffer's when eager)
            return (self.keys[layer][:, :, :seen].to(k_new.dtype), self.values[layer][:, :, :seen].to(v_new.dtype),
                    mask)
        seen = mask.shape[-1] - k_new.shape[2]  # the cache's slots this step attends to
        keys = torch.cat([self.keys[layer][:, :, :seen], k_new.to(self.keys[layer].dtype)], dim=2)
        values = torch.cat([self.values[layer][:, :, :seen], v_new.to(self.values[layer].dtype)], dim=2)
        self._write(layer, k_new, v_new)
        return keys.to(k_new.dtype), values.to(v_new.dtype), mask

    def end_step(self, lengths: torch.Tensor) -> None:
        if not self._step["decode"]:
            positions, valid = self._step["positions"], self._step["valid"]
            for window, size in self.sizes.items():
                self._write_positions(window, size, positions, valid)
        self.lengths += lengths
        self._step = {}

    def _keep(self, size: int, positions: torch.Tensor, valid: torch.Tensor, b: int):
        pos = positions[b][valid[b]]
        keep = pos > pos.max() - size  # a ring keeps only the newest `size` positions
        return torch.nonzero(valid[b]).squeeze(1)[keep], pos[keep]

    def _write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        window = self.windows[layer]
        size = self.sizes[window]
        positions, valid = self._step["positions"], self._step["valid"]
        for b in range(positions.shape[0]):
            if not bool(valid[b].any()):
                continue
            index, pos = self._keep(size, positions, valid, b)
            slots = pos % size
            self.keys[layer][b, :, slots] = k_new[b, :, index].to(self.keys[layer].dtype)
            self.values[layer][b, :, slots] = v_new[b, :, index].to(self.values[layer].dtype)

    def _write_positions(self, window, size: int, positions: torch.Tensor, valid: torch.Tensor) -> None:
        for b in range(positions.shape[0]):
            if bool(valid[b].any()):
                _, pos = self._keep(size, positions, valid, b)
                self.slot_positions[window][b, pos % size] = pos

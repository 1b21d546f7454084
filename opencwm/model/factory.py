"""A fresh CWM for a training run: the one rule every run (``opencwm train``, the speedrun, the benchmarks) builds
its untrained model by."""

from __future__ import annotations

import torch

from opencwm.model.config import preset
from opencwm.model.transformer import CWM

MIN_POSITIONS = 4096  # evaluation and generation read past the training sequence length (rollouts of long traces)


def fresh_model(preset_name: str, tokenizer, *, seq_len: int, seed: int = 0, device: str | torch.device = "cpu",
                zero_residual: bool = False, **overrides) -> CWM:
    """The untrained model of ``preset_name`` for ``tokenizer`` (its vocabulary and special-token ids), seeded,
    on ``device``; positions up to ``max(MIN_POSITIONS, seq_len)``; ``overrides`` change the preset's config (e.g.
    ``hidden_size``). ``zero_residual``: residual output projections start at zero (the Muon recipe)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = CWM(preset(preset_name, **tokenizer.config_fields(),
                           max_position_embeddings=max(MIN_POSITIONS, seq_len), **overrides))
    return model.init_weights(seed=seed, zero_residual=zero_residual)

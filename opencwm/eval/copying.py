"""Does a model copy? The share of a repeated random stretch of tokens that it predicts right, teacher-forced.

Nothing but looking back predicts the second copy of uniformly random tokens, so this measures induction heads
(attend to the token after an earlier occurrence of the current one, copy it): near 0 for a model that has none,
near 1 once they have formed. Predicting a trace needs them (the next action is a line of the source, the locals
repeat the names of the frame before), so the speedrun reports it beside the world-modeling figures. The CPU
speedrun's `tiny` model scores 0: after 3.7M tokens it has none, which is why it gets most frame tokens right but
few whole frames (it misspells the source lines it should copy). A first training stage on such repeats did not
grow them within 300 steps when the stretch length varies (with one fixed length the model learns a fixed-offset
head instead, in ~150 steps, which is not copying), nor did a smaller alphabet of repeated symbols.
"""

from __future__ import annotations

import random


def copying_accuracy(model, *, low: int, high: int, length: int = 40, samples: int = 16, seed: int = 0) -> float:
    """Mean over ``samples`` stretches of ``length`` token ids drawn from ``low``..``high - 1``: the share of the
    second copy's tokens (after its first, which nothing predicts) that are the model's most likely token."""
    import torch

    rng = random.Random(seed)
    rows = []
    for _ in range(samples):
        stretch = [rng.randrange(low, high) for _ in range(length)]
        rows.append(stretch + stretch)
    ids = torch.tensor(rows, device=model.device)
    with torch.no_grad():
        predicted = model(ids).argmax(-1)
    # position i predicts token i + 1: positions length .. 2 * length - 2 predict the second copy after its first
    return (predicted[:, length:-1] == ids[:, length + 1 :]).float().mean().item()

"""Does a model copy? The share of a repeated random stretch of tokens that it predicts right, teacher-forced.

Nothing but looking back predicts the second copy of random tokens, so this measures induction heads (attend to the
token after an earlier occurrence of the current one, copy it): near 0 for a model that has none, near 1 once they
have formed. Predicting a trace needs them (the next action is a line of the source, the locals repeat the names
of the frame before). The speedrun draws the stretches from the token ids its held-out traces use
(``token_alphabet``; a uniform draw from the whole vocabulary asks for ids that training never showed: the
traces use 246 of 2,048) and reports the whole-vocabulary figure beside it. Heads form on the speedrun's copy
drills (``opencwm.data.documents.copy_drills``) in a few hundred steps, where code and traces alone never grow
them at a CPU's budget.
"""

from __future__ import annotations

import random

from opencwm.data.documents import token_alphabet  # (re-exported: the alphabet copying draws from)

__all__ = ["copying_accuracy", "token_alphabet"]


def copying_accuracy(model, *, low: int = 0, high: int | None = None, ids: list[int] | None = None, length: int = 40,
                     samples: int = 16, seed: int = 0) -> float:
    """Mean over ``samples`` stretches of ``length`` token ids drawn uniformly from ``low``..``high - 1`` (or from
    ``ids``): the share of the second copy's tokens (after its first, which nothing predicts) that are the model's
    most likely token."""
    import torch

    if ids is None and high is None:
        raise ValueError("copying_accuracy: give high or ids")
    rng = random.Random(seed)
    draw = (lambda: rng.randrange(low, high)) if ids is None else (lambda: rng.choice(ids))
    rows = []
    for _ in range(samples):
        stretch = [draw() for _ in range(length)]
        rows.append(stretch + stretch)
    batch = torch.tensor(rows, device=model.device)
    with torch.no_grad():
        predicted = model(batch).argmax(-1)
    # position i predicts token i + 1: positions length .. 2 * length - 2 predict the second copy after its first
    return (predicted[:, length:-1] == batch[:, length + 1 :]).float().mean().item()

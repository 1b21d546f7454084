"""The policy-gradient objective of opencwm's RL: group-relative advantages and a clipped surrogate with token-level
normalisation, GRPO as CWM's post-training uses it, with the options of the recent GRPO literature, each stated in
``Objective`` and switchable:

- ``epsilon_low`` / ``epsilon_high``: the ratio is clipped to ``[1 - low, 1 + high]``; ``high > low`` is DAPO's
  "clip-higher" (the default, 0.2 / 0.28);
- ``beta``: a KL term to the initial policy (the k3 estimator, as GRPO's paper and TRL); 0 by default, when the
  initial policy's log-probabilities are not needed at all (the KL is still reported as a metric when given);
- ``scale_rewards``: ``none`` (Dr. GRPO: advantages are rewards minus the group mean; the default), ``group``
  (divided by the group's standard deviation, GRPO's original) or ``batch`` (by the whole batch's);
- ``aggregation``: how token losses become the loss: ``token`` (DAPO: every learned token of the batch weighs the
  same; the default), ``sequence`` (GRPO's original: a mean per sequence, then over sequences) or ``constant``
  (Dr. GRPO: the sum over a constant, sequences x the response limit).

Group filtering (groups whose rewards are all equal carry no advantage) and overlong responses are the rollouts'
business (``opencwm.rl.rollouts``). ``tests/test_rl.py`` checks loss and gradients against TRL's GRPO loss for each
option TRL also has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SCALES = ("none", "group", "batch")
AGGREGATIONS = ("token", "sequence", "constant")
STD_EPSILON = 1e-4  # added to a standard deviation before dividing by it (as TRL)


@dataclass
class Objective:
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0
    scale_rewards: str = "none"
    aggregation: str = "token"

    def __post_init__(self) -> None:
        if self.scale_rewards not in SCALES:
            raise ValueError(f"scale_rewards must be one of {', '.join(SCALES)}, not {self.scale_rewards!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {self.aggregation!r}")
        if not (0 <= self.epsilon_low < 1 and self.epsilon_high >= 0 and self.beta >= 0):
            raise ValueError("need 0 <= epsilon_low < 1, epsilon_high >= 0 and beta >= 0")

    def as_dict(self) -> dict:
        return asdict(self)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "none") -> torch.Tensor:
    """Each sample's reward minus its group's mean (groups: consecutive runs of ``group_size``), divided by the
    group's (``group``) or the batch's (``batch``) standard deviation (unbiased, plus ``STD_EPSILON``) or not."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not make groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + STD_EPSILON)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + STD_EPSILON)
    return advantages


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                objective: Objective, *, ref_logps: torch.Tensor | None = None, max_tokens: int | None = None,
                total_tokens: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss of a batch and its metrics. ``logps``, ``old_logps`` (the sampling policy's;
    ratios are 1 on-policy), ``ref_logps`` (the initial policy's) and ``mask`` (1 on the model's own tokens) are
    (sequences, tokens); ``advantages`` one per sequence. ``max_tokens``: the response limit (``constant``
    aggregation); ``total_tokens``: the learned tokens of the whole step when a batch is a part of it (``token``
    aggregation over micro-batches, so every token weighs the same however the step is split)."""
    mask = mask.to(logps.dtype)
    advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - objective.epsilon_low, 1 + objective.epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if ref_logps is not None:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if objective.beta:
            per_token = per_token + objective.beta * kl
    if objective.aggregation == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif objective.aggregation == "constant":
        if max_tokens is None:
            raise ValueError("constant aggregation needs max_tokens (the response limit)")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_tokens)
    else:
        denominator = total_tokens if total_tokens is not None else mask.sum().clamp(min=1.0)
        loss = (per_token * mask).sum() / denominator
    with torch.no_grad():
        count = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - objective.epsilon_low) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1 + objective.epsilon_high) & (advantages > 0)).to(mask.dtype)
        metrics = {"clip_low": float((low * mask).sum() / count), "clip_high": float((high * mask).sum() / count),
                   "ratio": float((ratio * mask).sum() / count)}
        if kl is not None:
            metrics["kl"] = float((kl * mask).sum() / count)
    return loss, metrics

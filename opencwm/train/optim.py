"""Optimizers of the training loop: AdamW (CWM's own recipe) or Muon for the hidden matrices.

``adamw``: one AdamW over every parameter, weight decay on matrices and embeddings, none on norms.

``muon``: the transformer blocks' weight matrices (attention and MLP projections) are updated by Muon
(``torch.optim.Muon``: momentum orthogonalised by Newton-Schulz, scaled by sqrt(max(1, rows / columns)) as in
Keller Jordan's original) at ``muon_lr``; embeddings, the output head and norms stay on AdamW at ``lr`` without
weight decay, as Muon is meant only for hidden 2-D weights. Small models learn much faster this way: on the
speedrun's traces, 250 steps of the ``tiny`` preset got 83% of held-out frame tokens right against 75% with AdamW
(``benchmarks/optimizer_bench.py``). Muon orthogonalises whole matrices, so it is refused under FSDP2, where each
rank holds only a shard.

Both kinds are one ``Optimizers`` object: one ``step``/``zero_grad``, one state dict for checkpoints, and every
param group carries its own ``base_lr`` that the schedule scales.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "muon")


def _is_hidden_matrix(name: str, parameter: torch.Tensor) -> bool:
    return parameter.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name


class Optimizers:
    """Several optimizers stepped as one (each param group has a ``base_lr``)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def set_lr_scale(self, scale: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * scale

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if "optimizers" not in state:  # a checkpoint from before this class: one AdamW
            state = {"optimizers": [state]}
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the checkpoint has {len(state['optimizers'])} optimizer(s), this run "
                             f"{len(self.optimizers)}: resume with the optimizer it was written with")
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)


def build_optimizer(model: torch.nn.Module, *, kind: str, lr: float, muon_lr: float, weight_decay: float,
                    betas: tuple[float, float], distributed: bool = False, fused: bool = False) -> Optimizers:
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r} (choose from {', '.join(OPTIMIZERS)})")
    named = list(model.named_parameters())
    if kind == "adamw":
        groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        return Optimizers([torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)])
    if distributed:
        raise ValueError("the muon optimizer needs whole matrices; under FSDP2 use --optimizer adamw")
    hidden = [p for n, p in named if _is_hidden_matrix(n, p)]
    rest = [p for n, p in named if not _is_hidden_matrix(n, p)]
    muon = torch.optim.Muon(hidden, lr=muon_lr, weight_decay=weight_decay, adjust_lr_fn="original")
    adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=0.0, fused=fused)
    return Optimizers([muon, adamw])

"""The output layer and the summed next-token cross-entropy in one pass over row chunks, gradients included.

For fp32 training on a CPU. The (tokens, vocab) logits are never held whole: each chunk of rows gets its logits,
its share of the loss and, since the loss is a sum, its gradients with respect to the hidden states and the output
weights right away, while the chunk's logits are still in cache; the backward only scales them by the incoming
gradient. Rows whose label is ``IGNORE`` (prompt tokens in SFT, padding) are dropped before the output layer, so
they cost nothing.

It is a custom operator (``opencwm::linear_cross_entropy``) so that ``torch.compile`` leaves it whole.

    loss = linear_cross_entropy(hidden, lm_head.weight, labels)   # summed over the labelled positions
"""

from __future__ import annotations

import torch
from torch import Tensor

from opencwm.special_tokens import IGNORE

CHUNK = 256  # rows per chunk: 256 x a 4k vocabulary is 4 MB of logits


@torch.library.custom_op("opencwm::linear_cross_entropy", mutates_args=())
def _forward(hidden: Tensor, weight: Tensor, labels: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    grad_hidden = torch.zeros_like(flat)
    grad_weight = torch.zeros_like(weight)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    rows = (targets != IGNORE).nonzero().squeeze(1)
    everything = len(rows) == len(targets)
    for start in range(0, len(rows), chunk):
        index = rows[start : start + chunk]
        if everything:
            x, target, n = flat[start : start + chunk], targets[start : start + chunk], len(index)
        else:
            x, target, n = flat[index], targets[index], len(index)
        log_probs = torch.log_softmax(x @ weight.T, dim=-1)
        picked = torch.arange(n, device=x.device)
        loss -= log_probs[picked, target].sum()
        grad_logits = log_probs.exp_()
        grad_logits[picked, target] -= 1
        grad_weight.addmm_(grad_logits.T, x)
        if everything:
            torch.mm(grad_logits, weight, out=grad_hidden[start : start + chunk])
        else:
            grad_hidden[index] = grad_logits @ weight
    return loss, grad_hidden.view_as(hidden), grad_weight


@_forward.register_fake
def _(hidden, weight, labels, chunk):
    return hidden.new_empty((), dtype=torch.float32), torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_loss, _grad_hidden, _grad_weight):
    grad_hidden, grad_weight = ctx.saved_tensors
    return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, *, chunk: int = CHUNK) -> Tensor:
    """Summed cross-entropy (fp32) of ``hidden @ weight.T`` against ``labels`` (``IGNORE`` for none)."""
    return _forward(hidden, weight, labels, chunk)[0]

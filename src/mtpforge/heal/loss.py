"""The distillation loss through the frozen `lm_head`, in chunks of rows: never all positions' full-vocab logits at once.

At a 248K vocabulary, 1,024 positions of float32 logits are 1 GiB, and autograd would keep several such tensors
for the backward pass. The head's hidden states are the only trainable input (`lm_head` is frozen), so the
gradient is known in closed form, `dL/dh = (softmax(h W^T) - q) W`, and is computed chunk by chunk during the
forward pass (as fused linear-cross-entropy kernels do); the backward pass only scales it.

- `ce`: cross-entropy against the trunk's greedy token (q is one-hot);
- `kl`: KL(teacher || head) against the trunk's own distribution, recomputed per chunk from the captured
  trunk hidden states (the teacher's logits are never stored either).

Per-row weights let a chained step count only the chains whose earlier drafts were accepted.
"""

from __future__ import annotations

from typing import Any

import torch

from mtpforge.heal.data import chunk_rows

LOSSES = ("kl", "ce")


class _Distill(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, lm_head: torch.Tensor, teacher: torch.Tensor | None, target: torch.Tensor,
                weights: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad = torch.zeros_like(hidden)
        total = hidden.new_zeros((), dtype=torch.float32)
        argmax = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
        hits = torch.empty(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        norm = weights.sum().clamp_min(1.0)
        for s in range(0, hidden.shape[0], rows):
            e = min(s + rows, hidden.shape[0])
            logits = (hidden[s:e].to(lm_head.dtype) @ lm_head.T).float()
            argmax[s:e] = logits.argmax(-1)
            hits[s:e] = argmax[s:e] == target[s:e]
            logp = torch.log_softmax(logits, -1)
            w = weights[s:e, None] / norm
            if teacher is None:
                total += -(logp.gather(-1, target[s:e, None]) * w).sum()
                g = logp.exp_()
                g.scatter_add_(-1, target[s:e, None], -torch.ones_like(w))
            else:
                logq = torch.log_softmax((teacher[s:e].to(lm_head.dtype) @ lm_head.T).float(), -1)
                q = logq.exp()
                total += ((q * (logq - logp)).sum(-1, keepdim=True) * w).sum()
                g = logp.exp_().sub_(q)
            grad[s:e] = ((g * w).to(lm_head.dtype) @ lm_head).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(argmax, hits)
        return total, argmax, hits

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def distill_loss(hidden: torch.Tensor, lm_head: torch.Tensor, target: torch.Tensor, *, teacher: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weighted mean loss of the head's hidden states `hidden` [N, H] through the frozen `lm_head` [V, H].

    Args:
        target: the trunk's greedy token per row [N] (the `ce` target; also what `hits` compares with).
        teacher: the trunk's hidden state per row [N, H] for the `kl` loss; None for `ce`.
        weights: per-row weights [N] (default 1).
        rows: rows per chunk (default: about 16M logits per chunk).

    Returns:
        The loss (a scalar with a gradient for `hidden`), the head's greedy draft per row, and whether it hits `target`.
    """
    weights = torch.ones(hidden.shape[0], device=hidden.device) if weights is None else weights
    loss, argmax, hits = _Distill.apply(hidden, lm_head.detach(), None if teacher is None else teacher.detach(), target,
                                        weights.float(), rows or chunk_rows(lm_head.shape[0]))
    return loss, argmax, hits

"""How far a candidate's next-token distributions are from a reference's, on the same tokens.

Both models read the same sequences (teacher forcing). Per position:
KL(reference || candidate) in nats, and whether their top-1 tokens agree.
Perplexity is each model's on the actual next tokens of those sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mtpforge.reference.model import ReferenceModel


@dataclass(frozen=True)
class Divergence:
    kl_mean_nats: float
    kl_p50_nats: float
    kl_p90_nats: float
    kl_p99_nats: float
    kl_max_nats: float
    top1_agreement: float
    perplexity_candidate: float
    perplexity_reference: float
    positions: int

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@torch.no_grad()
def measure_divergence(candidate: ReferenceModel, reference: ReferenceModel, sequences: list[list[int]]) -> Divergence:
    """KL, top-1 agreement and perplexities over every position of `sequences`."""
    kls, agree, nll_c, nll_r, count = [], 0, 0.0, 0.0, 0
    for seq in sequences:
        ids = torch.tensor([seq])
        lc = torch.log_softmax(candidate.trunk_forward(ids)[1][0].float(), -1)
        lr = torch.log_softmax(reference.trunk_forward(ids)[1][0].float(), -1)
        kl = (lr.exp() * (lr - lc)).sum(-1).clamp(min=0)  # clamp: float rounding can give -1e-9
        kls.append(kl)
        agree += int((lc.argmax(-1) == lr.argmax(-1)).sum())
        nxt = ids[0, 1:].to(lc.device)
        nll_c += float(-lc[:-1].gather(1, nxt[:, None]).sum())
        nll_r += float(-lr[:-1].gather(1, nxt[:, None]).sum())
        count += len(seq) - 1
    all_kl = torch.cat(kls)
    q = torch.quantile(all_kl, torch.tensor([0.5, 0.9, 0.99]))
    return Divergence(float(all_kl.mean()), float(q[0]), float(q[1]), float(q[2]), float(all_kl.max()),
                      agree / len(all_kl), math.exp(nll_c / count), math.exp(nll_r / count), len(all_kl))

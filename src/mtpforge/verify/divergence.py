"""How far a candidate's next-token distributions are from a reference's, on the same tokens.

Both models read the same sequences (teacher forcing). Per position:
KL(reference || candidate) in nats, and whether their top-1 tokens agree.
Perplexity is each model's on the actual next tokens of those sequences.
Both models may be streamed (`reference.streamed`): each trunk runs once over all
sequences, its final hidden states are kept (positions x hidden, small), and the
vocabulary-wide log-probabilities are formed a few positions at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


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


ROWS = 64  # positions whose full-vocabulary log-probs are held at once: 64 x 248K x 4 B = 61 MiB per model


@torch.no_grad()
def measure_divergence(candidate: Any, reference: Any, sequences: list[list[int]], *,
                       candidate_hidden: list[torch.Tensor] | None = None,
                       reference_hidden: list[torch.Tensor] | None = None) -> Divergence:
    """KL, top-1 agreement and perplexities over every position of `sequences`.

    Either model may be in memory or streamed; hidden states already computed over `sequences` may be given.
    Log-probabilities are formed `ROWS` positions at a time, so memory stays bounded at any vocabulary.
    """
    hc = candidate_hidden if candidate_hidden is not None else candidate.hidden_states(sequences)
    hr = reference_hidden if reference_hidden is not None else reference.hidden_states(sequences)
    kls, agree, nll_c, nll_r, count = [], 0, 0.0, 0.0, 0
    for seq, c_hidden, r_hidden in zip(sequences, hc, hr, strict=True):
        nxt = torch.tensor([*seq[1:], 0])  # the last position has no next token: its NLL is left out below
        for i in range(0, len(seq), ROWS):
            lc = torch.log_softmax(candidate.logits(c_hidden[0, i:i + ROWS]).float(), -1)
            lr = torch.log_softmax(reference.logits(r_hidden[0, i:i + ROWS]).float(), -1).to(lc.device)
            kls.append((lr.exp() * (lr - lc)).sum(-1).clamp(min=0).cpu())  # clamp: float rounding can give -1e-9
            agree += int((lc.argmax(-1) == lr.argmax(-1)).sum())
            rows = min(ROWS, len(seq) - 1 - i)  # positions with a next token
            if rows > 0:
                target = nxt[i:i + rows, None].to(lc.device)
                nll_c += float(-lc[:rows].gather(1, target).sum())
                nll_r += float(-lr[:rows].gather(1, target).sum())
        count += len(seq) - 1
    all_kl = torch.cat(kls)
    q = torch.quantile(all_kl, torch.tensor([0.5, 0.9, 0.99]))
    return Divergence(float(all_kl.mean()), float(q[0]), float(q[1]), float(q[2]), float(all_kl.max()),
                      agree / len(all_kl), math.exp(nll_c / count), math.exp(nll_r / count), len(all_kl))

"""How sure an acceptance figure is: 95 % Wilson intervals on draft counts, and whether two measurements agree.

A per-position acceptance rate is `accepted / drafts`, a binomial proportion: each draft chain either
reaches position j or does not. The Wilson score interval is used rather than the normal
approximation because it stays inside [0, 1] and behaves at rates near 0 and 1 (a collapsed head,
a constant model), where the normal one claims a zero-width interval.

torch-free: `bench` and the engine-only path read it without the reference runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Z95 = 1.959964  # the two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `successes / trials`; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} is not between 0 and trials {trials}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def drafts_for_half_width(half_width: float, rate: float = 0.5, z: float = Z95) -> int:
    """Drafts needed for a ±`half_width` 95 % interval at `rate` (0.5, the worst case, by default)."""
    return math.ceil(z * z * rate * (1 - rate) / (half_width * half_width))


@dataclass
class Acceptance:
    """Draft counters, vLLM's way."""

    k: int
    drafts: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)  # how many chains accepted exactly n drafts, n = 0..k

    def __post_init__(self) -> None:
        self.accepted_per_pos = self.accepted_per_pos or [0] * self.k
        self.histogram = self.histogram or [0] * (self.k + 1)

    def add(self, accepted: int) -> None:
        self.drafts += 1
        self.histogram[accepted] += 1
        for j in range(accepted):
            self.accepted_per_pos[j] += 1

    @property
    def rates(self) -> list[float]:
        return [a / self.drafts if self.drafts else 0.0 for a in self.accepted_per_pos]

    @property
    def mean_acceptance_length(self) -> float:
        return 1 + sum(self.accepted_per_pos) / self.drafts if self.drafts else 1.0

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """The 95 % Wilson interval of each position's rate (`verify.stats`)."""
        return [wilson_interval(a, self.drafts) for a in self.accepted_per_pos]

    def to_dict(self) -> dict[str, object]:
        return {"k": self.k, "drafts": self.drafts, "accepted_per_position": self.accepted_per_pos,
                "acceptance_per_position": [round(r, 4) for r in self.rates],
                "interval95_per_position": [[round(lo, 4), round(hi, 4)] for lo, hi in self.intervals],
                "histogram": self.histogram, "mean_acceptance_length": round(self.mean_acceptance_length, 4)}


@dataclass(frozen=True)
class PositionAgreement:
    """One draft position measured twice (e.g. the reference runtime and vLLM)."""

    position: int
    rate_a: float
    interval_a: tuple[float, float]
    rate_b: float
    interval_b: tuple[float, float]

    @property
    def agree(self) -> bool:
        """True when the two 95 % intervals overlap: the measurements do not tell the rates apart."""
        return self.interval_a[0] <= self.interval_b[1] and self.interval_b[0] <= self.interval_a[1]

    def to_dict(self) -> dict[str, object]:
        return {"position": self.position, "rate_a": round(self.rate_a, 4), "interval_a": [round(x, 4) for x in self.interval_a],
                "rate_b": round(self.rate_b, 4), "interval_b": [round(x, 4) for x in self.interval_b], "agree": self.agree}


def compare_counts(accepted_a: list[int], drafts_a: int, accepted_b: list[int], drafts_b: int) -> list[PositionAgreement]:
    """Per position, both rates with their intervals and whether they agree (positions both measured)."""
    out = []
    for j in range(min(len(accepted_a), len(accepted_b))):
        out.append(PositionAgreement(j, accepted_a[j] / drafts_a if drafts_a else 0.0, wilson_interval(accepted_a[j], drafts_a),
                                     accepted_b[j] / drafts_b if drafts_b else 0.0, wilson_interval(accepted_b[j], drafts_b)))
    return out


def comparison(label_a: str, a: dict[str, object], label_b: str, b: dict[str, object]) -> dict[str, object]:
    """The JSON comparison of two acceptance documents (`Acceptance.to_dict()` shape): per position and overall."""
    acc_a, acc_b = a["accepted_per_position"], b["accepted_per_position"]
    drafts_a, drafts_b = a["drafts"], b["drafts"]
    assert isinstance(acc_a, list) and isinstance(acc_b, list) and isinstance(drafts_a, int) and isinstance(drafts_b, int)
    rows = compare_counts(acc_a, drafts_a, acc_b, drafts_b)
    return {"a": label_a, "b": label_b, "positions": [r.to_dict() for r in rows], "agree": all(r.agree for r in rows)}

"""mtp-norm-convention: are the MTP norms stored in the trunk's convention, key by key?

Qwen3.5 / Qwen3-Next RMSNorms compute `x * (1 + w)` and store the offset `w`.
A converter that adds 1 to the head (or shifts it twice, or never) inverts or
collapses the drafts (docs/domain.md §2.4, F8, F18). Absolute thresholds misfire:
`pre_fc_norm_*` sit below 0.5 in either convention. So two tests, one per kind of key:

- a norm with trunk counterparts of the same type (`input_layernorm`, `q_norm`,
  the final `norm`, ...) is compared with their mean: a healthy head differs from
  its trunk by far less than 1, a shifted one by about ±1;
- the norms without one (`pre_fc_norm_embedding`, `pre_fc_norm_hidden`) are judged
  together, by the mean of the pair (one converter rule treats both alike). Their
  effective scale `1 + w` is positive and below 1 on a trained head (0.2734 and
  0.4937 on Qwen3.6-35B-A3B, jundot/omlx#3742), so the stored offsets lie in
  (-1, 0), "uniformly negative" (youssofal/MTPLX#511). A pair mean at or below -1
  is a negative scale, the offset removed twice, which inverts the head; one at or
  above PRE_FC_ABSOLUTE is the absolute value `1 + w` stored (the offset lost:
  0.38 for that head). Between 0 and PRE_FC_ABSOLUTE sits a barely trained head
  (the bundled tiny model: +0.05 and -0.10, pair -0.02), near the initial 0.

Each key gets its own verdict, so a head whose keys disagree (a converter that
shifted only the pre-fc pair) is reported as mixed, naming both sides.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from mtpforge.checkpoint.header import FLOAT_DTYPES
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP, TRUNK, TensorSpec
from mtpforge.families.base import NORM

SHIFT_THRESHOLD = 0.5  # half-way between "same convention" (0) and "shifted by one" (1)
PRE_FC_ABSOLUTE = 0.2  # a pre-fc pair mean this far above the offset convention's initial 0 is stored as 1 + w
TRUNK_SAMPLES = 8  # trunk norms read per type: enough for a stable mean, bounded I/O


Mean = Callable[[TensorSpec], "float | None"]


@dataclass(frozen=True)
class NormRow:
    """One MTP norm: its stored mean, and the mean of its trunk counterparts (None when it has none, and then
    `pooled`: the mean over the head's norms without counterparts, which are judged together)."""

    name: str
    mean: float
    trunk: float | None
    pooled: float = 0.0

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else self.name

    @property
    def shift(self) -> int:
        """-1, 0 or +1: how far the stored offset is from the trunk's convention, in units of the offset."""
        if self.trunk is not None:
            diff = self.mean - self.trunk
            return 0 if abs(diff) < SHIFT_THRESHOLD else (1 if diff > 0 else -1)
        # No counterpart: a scale 1 + w in (0, 1) means w in (-1, 0) (module docstring).
        return 1 if self.pooled >= PRE_FC_ABSOLUTE else -1 if self.pooled <= -1 else 0

    def evidence(self) -> str:
        if self.trunk is not None:
            return f"{self.key} {self.mean:+.2f} vs trunk {self.trunk:+.2f}"
        return f"{self.key} {self.mean:+.2f} (no trunk counterpart: an offset in (-1, 0) expected)"


def check_norms(ctx: Context) -> list[Finding]:
    """Judge each offset-convention MTP norm; one finding naming the shifted keys (and the unshifted ones when mixed)."""
    rows = norm_rows(ctx.expected, lambda s: _mean(ctx, s), lambda s: _mean(ctx, s))
    shifted = [r for r in rows if r.shift]
    if not shifted:
        return []
    files = sorted({ctx.stored[r.name].parts[""].shard for r in shifted})
    kept = [r for r in rows if not r.shift]
    directions = {r.shift for r in shifted}
    evidence = ", ".join(r.evidence() for r in shifted[:4]) + (f" and {len(shifted) - 4} more" if len(shifted) > 4 else "")
    if len(directions) == 1 and not kept:
        message = (f"the MTP norms are {_direction(shifted[0].shift)} relative to the trunk's ({evidence}); "
                   "the head would collapse to ~0% acceptance")
    else:
        groups = "; ".join(f"{_direction(d)}: {', '.join(r.key for r in shifted if r.shift == d)}" for d in sorted(directions))
        message = (f"the MTP norms mix conventions key by key: {groups}; in the trunk's convention: "
                   f"{', '.join(r.key for r in kept) or 'none'} ({evidence}); the head would collapse to ~0% acceptance")
    return [finding("mtp-norm-convention", message, tensors=[r.name for r in shifted], files=files)]


def shifted_norms(ctx: Context) -> dict[str, int]:
    """MTP norm tensor -> the shift (±1) to subtract from its stored values to restore the trunk's convention."""
    return {r.name: r.shift for r in norm_rows(ctx.expected, lambda s: _mean(ctx, s), lambda s: _mean(ctx, s)) if r.shift}


def norm_rows(expected: Mapping[str, TensorSpec], head_mean: Mean, trunk_mean: Mean) -> list[NormRow]:
    """Every readable offset-convention MTP norm, with the mean of its same-type trunk norms where there are any."""
    by_type: dict[str, list[TensorSpec]] = {}
    for spec in expected.values():
        if spec.group == TRUNK and spec.kind == NORM and spec.norm_offset:
            by_type.setdefault(spec.local_name, []).append(spec)
    rows = []
    for spec in expected.values():
        if spec.group != MTP or spec.kind != NORM or not spec.norm_offset:
            continue
        mtp_mean = head_mean(spec)
        if mtp_mean is None:
            continue
        trunk = by_type.get(spec.local_name, [])
        step = max(1, len(trunk) // TRUNK_SAMPLES)
        trunk_means = [m for s in trunk[::step] if (m := trunk_mean(s)) is not None]
        if trunk and not trunk_means:
            continue  # counterparts exist but cannot be read (quantized, missing): no verdict
        rows.append(NormRow(spec.name, mtp_mean, statistics.fmean(trunk_means) if trunk_means else None))
    alone = [r for r in rows if r.trunk is None]
    if not alone:
        return rows
    pooled = statistics.fmean(r.mean for r in alone)
    return [replace(r, pooled=pooled) if r.trunk is None else r for r in rows]


def norm_shift(expected: Mapping[str, TensorSpec], head_mean: Mean,
               trunk_mean: Mean) -> tuple[float, list[tuple[str, float, float]]]:
    """The median difference between MTP norms and same-type trunk norms, and the rows behind it.

    `head_mean` and `trunk_mean` read a norm's mean value (None when unreadable),
    so the head and the trunk may come from different checkpoints (a graft).
    """
    rows = [(r.name, r.mean, r.trunk) for r in norm_rows(expected, head_mean, trunk_mean) if r.trunk is not None]
    if not rows:
        return 0.0, []
    return statistics.median(m - t for _, m, t in rows), rows


def _direction(shift: int) -> str:
    return "shifted by +1 (stored as 1 + w, or shifted twice)" if shift > 0 else "shifted by -1 (the offset removed twice)"


def _mean(ctx: Context, spec: TensorSpec) -> float | None:
    weight = ctx.stored.get(spec.name)
    if weight is None or weight.quantized or weight.dtype not in FLOAT_DTYPES:
        return None
    return float(ctx.ckpt.read(weight.parts[""]).mean())

"""mtp-norm-convention: are the MTP norms stored in the trunk's convention?

Qwen3.5 / Qwen3-Next RMSNorms compute `x * (1 + w)` and store the offset `w`.
A converter that adds 1 to the head (or shifts it twice, or never) inverts or
collapses the drafts (docs/domain.md §2.4, F8, F18). Absolute thresholds misfire:
`pre_fc_norm_*` sit below 0.5 in either convention. So each MTP norm is
compared with the trunk norms of the same type (`input_layernorm`, `q_norm`,
the final `norm`, ...): a healthy head differs from its trunk by far less than
1, a shifted one by about ±1.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping

from mtpforge.checkpoint.header import FLOAT_DTYPES
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP, TRUNK, TensorSpec
from mtpforge.families.base import NORM

SHIFT_THRESHOLD = 0.5  # half-way between "same convention" (0) and "shifted by one" (1)
TRUNK_SAMPLES = 8  # trunk norms read per type: enough for a stable mean, bounded I/O


Mean = Callable[[TensorSpec], "float | None"]


def check_norms(ctx: Context) -> list[Finding]:
    """Compare each offset-convention MTP norm with the mean of its trunk counterparts."""
    shift, rows = norm_shift(ctx.expected, lambda s: _mean(ctx, s), lambda s: _mean(ctx, s))
    if abs(shift) < SHIFT_THRESHOLD:
        return []
    evidence = ", ".join(f"{n.split('mtp.', 1)[1]} {m:+.2f} vs trunk {t:+.2f}" for n, m, t in rows[:4])
    direction = "shifted by +1 (stored as 1 + w, or shifted twice)" if shift > 0 else "shifted by -1 (the offset removed twice)"
    return [finding("mtp-norm-convention", f"the MTP norms are {direction} relative to the trunk's: median difference "
                    f"{shift:+.2f} ({evidence}); the head would collapse to ~0% acceptance", tensors=[n for n, _, _ in rows])]


def norm_shift(expected: Mapping[str, TensorSpec], head_mean: Mean,
               trunk_mean: Mean) -> tuple[float, list[tuple[str, float, float]]]:
    """The median difference between MTP norms and same-type trunk norms, and the rows behind it.

    `head_mean` and `trunk_mean` read a norm's mean value (None when unreadable),
    so the head and the trunk may come from different checkpoints (a graft).
    """
    by_type: dict[str, list[TensorSpec]] = {}
    for spec in expected.values():
        if spec.group == TRUNK and spec.kind == NORM and spec.norm_offset:
            by_type.setdefault(spec.local_name, []).append(spec)
    rows = []
    for spec in expected.values():
        if spec.group != MTP or spec.kind != NORM or not spec.norm_offset:
            continue
        trunk = by_type.get(spec.local_name, [])
        mtp_mean = head_mean(spec)
        step = max(1, len(trunk) // TRUNK_SAMPLES)
        trunk_means = [m for s in trunk[::step] if (m := trunk_mean(s)) is not None]
        if mtp_mean is not None and trunk_means:
            rows.append((spec.name, mtp_mean, statistics.fmean(trunk_means)))
    if not rows:
        return 0.0, []
    return statistics.median(m - t for _, m, t in rows), rows



def _mean(ctx: Context, spec: TensorSpec) -> float | None:
    weight = ctx.stored.get(spec.name)
    if weight is None or weight.quantized or weight.dtype not in FLOAT_DTYPES:
        return None
    return float(ctx.ckpt.read(weight.parts[""]).mean())

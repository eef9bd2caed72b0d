"""INT quantization (round to nearest) and compressed-tensors packing, as pure tensor functions.

Follows compressed-tensors 0.19 (`quantization/utils/helpers.py`, `pack_quantized/helpers.py`):
the min-max observer includes zero; symmetric `scale = max|w| / ((2^b - 1) / 2)`;
asymmetric `scale = (max - min) / (2^b - 1)` and `zp = round(qmin - min / scale)`;
`q = clamp(round(w / scale) + zp, qmin, qmax)`; values are packed LSB-first into
int32 words after adding 2^(b-1); zero points are packed along dim 0.
"""

from __future__ import annotations

import torch


def quantize_int(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one Linear weight [out, in] (BF16 scales)."""
    out, inp = w.shape
    if group_size and inp % group_size:
        raise ValueError(f"{inp} inputs do not divide into groups of {group_size}")
    groups = inp // group_size if group_size else 1
    g = w.float().reshape(out, groups, -1)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi) / ((qmax - qmin) / 2)
        zp = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).to(torch.bfloat16)
    if not symmetric:
        zp = torch.clamp(torch.round(qmin - lo / scale.float()), qmin, qmax)
    q = torch.clamp(torch.round(g / scale.float()[..., None]) + zp[..., None], qmin, qmax).reshape(out, inp).to(torch.int8)
    tensors = {"weight_packed": pack_int32(q, bits), "weight_scale": scale, "weight_shape": torch.tensor([out, inp], dtype=torch.int64)}
    if not symmetric:
        tensors["weight_zero_point"] = pack_int32(zp.to(torch.int8).t().contiguous(), bits).t().contiguous()
    return tensors


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of signed `bits`-bit values packed LSB-first into int32 words (for bits dividing 32)."""
    if 32 % bits:
        raise ValueError(f"{bits}-bit values do not tile int32 words")
    per_word = 32 // bits
    rows, cols = q.shape
    padded = torch.nn.functional.pad(q.to(torch.int64) + (1 << (bits - 1)), (0, (-cols) % per_word))
    words = padded.reshape(rows, -1, per_word) << (torch.arange(per_word) * bits)
    packed = words.sum(-1)
    return torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)

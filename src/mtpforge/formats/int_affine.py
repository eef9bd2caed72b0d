"""INT quantization (round to nearest) with compressed-tensors' own arithmetic.

Scales and zero points come from compressed-tensors `calculate_qparams` on the
per-group min / max of the weight in its own dtype (BF16), and the integers from
its `quantize` op, which divides in that dtype too: this is what llm-compressor's
data-free path computes, so the packed words agree with it word for word (a
float32 division differs from it on about 0.7 % of values, at the .5 ties of
the BF16 quotient). `formats.packing` packs the integers and the zero points.
"""

from __future__ import annotations

import torch

from mtpforge.formats.packing import pack_int


def quantize_int(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool,
                 qparams: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one Linear weight [out, in] (scales in the weight's dtype).

    `qparams`: (scale, zero point) [out, groups] from elsewhere (an MSE observer, GPTQ) instead of the min-max of `w`;
    `w` may then be float32 (GPTQ's result, already on that grid); the scales are stored in their own dtype.
    """
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    out, inp = w.shape
    if group_size and inp % group_size:
        raise ValueError(f"{inp} inputs do not divide into groups of {group_size}")
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group" if group_size else "channel",
                            group_size=group_size)
    groups = w.reshape(out, inp // group_size if group_size else 1, -1)
    scale, zp = qparams if qparams is not None else calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    q = quantize(x=w, scale=scale.to(w.dtype), zero_point=zp, args=args, dtype=torch.int8)
    tensors = {"weight_packed": pack_int(q, bits), "weight_scale": scale if qparams is not None else scale.to(w.dtype),
               "weight_shape": torch.tensor([out, inp], dtype=torch.int64)}
    if not symmetric:
        tensors["weight_zero_point"] = pack_int(zp.to(torch.int8), bits, dim=0)
    return tensors

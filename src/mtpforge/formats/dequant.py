"""Dequantize stored weights for the reference runtime, with compressed-tensors'
arithmetic (`quantization/lifecycle/forward_helpers.py::_dequantize`, 0.19):

- pack-quantized INT: `(q - zp) * scale` in the scale's dtype (BF16), each
  scale column covering `in / groups` inputs, or the inputs `weight_g_idx`
  gives it (unpacking: `formats.packing`).
- GPTQ v1: `formats.gptq.dequantize_gptq` (the same integers and scales give
  the same BF16 values).
- nvfp4-pack-quantized: E2M1 nibbles (low nibble first, sign in bit 3) in
  BF16, times `bf16(weight_scale) / weight_global_scale` computed in float32,
  rounded to BF16.
- modelopt NVFP4: the same nibbles times `weight_scale * weight_scale_2`
  (modelopt's `weight_scale_2` is compressed-tensors' `1 / weight_global_scale`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtpforge.errors import CheckpointError
from mtpforge.formats.packing import unpack_fp4, unpack_int
from mtpforge.formats.stored import CT_INT, CT_NVFP4, DENSE, GPTQ, MODELOPT_NVFP4, StoredTensor, StoredWeight

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def dequantize(weight: StoredWeight, read: Callable[[StoredTensor], torch.Tensor]) -> torch.Tensor:
    """The logical weight `weight` stands for, in floating point; `read` gives one stored tensor in its own dtype."""
    if weight.format == DENSE:
        return read(weight.parts[""])
    parts = {k: read(v) for k, v in weight.parts.items()}
    if weight.format == CT_INT and weight.shape is not None and weight.bits:
        return dequantize_int(parts["weight_packed"], parts["weight_scale"], parts.get("weight_zero_point"),
                              bits=weight.bits, shape=tuple(weight.shape), g_idx=parts.get("weight_g_idx"))
    if weight.format == GPTQ and weight.bits:
        from mtpforge.formats.gptq import dequantize_gptq

        return dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"), bits=weight.bits)
    if weight.format == CT_NVFP4:
        values = unpack_fp4(parts["weight_packed"])
        scale = parts["weight_scale"].to(torch.bfloat16) / parts["weight_global_scale"]
        return (values.to(scale.dtype) * _expand(scale, values.shape[1])).to(torch.bfloat16)
    if weight.format == MODELOPT_NVFP4:
        values = unpack_fp4(parts["weight"]).float()
        scale = parts["weight_scale"].float() * parts["weight_scale_2"].float()
        return (values * _expand(scale, values.shape[1])).to(torch.bfloat16)
    raise CheckpointError(f"cannot dequantize {weight.name} ({weight.format})", hint="run `mtpforge doctor` on the checkpoint")


def dequantize_int(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, *, bits: int,
                   shape: tuple[int, ...], g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """`g_idx`: each input's scale group (llm-compressor's group activation order); None: contiguous groups."""
    out, inp = shape
    q = unpack_int(packed, bits, (out, inp))
    groups = scale.shape[1]
    values = q.to(scale.dtype)
    if g_idx is not None:
        columns = g_idx.long()
        if zero_point is not None:
            values = values - unpack_int(zero_point, bits, (out, groups), dim=0).to(scale.dtype)[:, columns]
        return values * scale[:, columns]
    if zero_point is not None:
        zp = unpack_int(zero_point, bits, (out, groups), dim=0)
        values = values - _expand(zp.to(scale.dtype), inp // groups * groups)
    return values * _expand(scale, inp // groups * groups)


def _expand(scale: torch.Tensor, columns: int) -> torch.Tensor:
    """Per-group scales [out, groups] repeated over their columns [out, columns]."""
    return scale.repeat_interleave(columns // scale.shape[1], dim=1)

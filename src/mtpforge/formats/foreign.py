"""Packed layouts of the formats mtpforge reads but does not write: GPTQ, AWQ (and AutoRound, which packs
as one of them), MXFP4 (AMD Quark, compressed-tensors) and MLX affine.

- GPTQ (GPTQModel, AutoGPTQ, AutoRound `auto_round:auto_gptq`): `X.qweight` I32 `[in*bits/32, out]`,
  `X.qzeros` I32 `[in/g, out*bits/32]`, `X.scales` F16 `[in/g, out]`, `X.g_idx` I32 `[in]` (optional).
- AWQ (AutoAWQ, AutoRound `auto_round:auto_awq`): `X.qweight` I32 `[in, out*bits/32]`,
  `X.qzeros` I32 `[in/g, out*bits/32]`, `X.scales` F16 `[in/g, out]`.
- MXFP4 (Quark; compressed-tensors `mxfp4-pack-quantized` packs `weight_packed` the same way):
  `X.weight` U8 `[out, in/2]`, `X.weight_scale` U8 (E8M0 exponents; F8_E8M0 in newer writers) `[out, in/32]`.
- MLX affine (mlx-lm `nn.quantize`): `X.weight` U32 `[out, in*bits/32]`, `X.scales` and `X.biases`
  `[out, in/g]` in the model's float dtype. Bits and group are in config.json, not in the shapes:
  the logical shape is known only when the caller passes the bits.

`layout` returns (logical shape or None, bits or None, problems); `hollow` lists the stored tensors of
one weight for test fixtures (names, dtypes and packed shapes, to be written as zeros), in these formats
and in modelopt's FP8 (`X.weight` F8_E4M3, 0-d F32 `weight_scale` and `input_scale`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

GPTQ = "gptq"
AWQ = "awq"
MXFP4 = "mxfp4"
MLX_AFFINE = "mlx-affine"
MX_GROUP = 32
MODELOPT_FP8 = "modelopt-fp8"  # only for `hollow`: `stored` reads it as FP8

# Suffixes of these formats that only ever accompany a packed weight. `scales` / `biases` are plain English
# words too, so they are kept out of `stored.COMPANION_SUFFIXES` (which tests scan the package for).
INT_SUFFIXES = ("qweight", "qzeros", "g_idx")
MLX_SUFFIXES = ("scales", "biases")
REQUIRED = {
    GPTQ: ("qweight", "qzeros", "scales"),
    AWQ: ("qweight", "qzeros", "scales"),
    MXFP4: ("weight_scale",),  # and the packed values: `weight` (Quark) or `weight_packed` (compressed-tensors)
    MLX_AFFINE: ("weight", "scales", "biases"),
}
E8M0_DTYPES = ("U8", "F8_E8M0")


class Shaped(Protocol):
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


Layout = tuple[tuple[int, ...] | None, int | None, list[str]]


def format_of(parts: Mapping[str, Shaped]) -> str | None:
    """The foreign format `parts` (param suffix -> stored tensor) is stored in, or None."""
    qweight, weight, scale = parts.get("qweight"), parts.get("weight"), parts.get("weight_scale")
    if qweight is not None:
        scales = parts.get("scales")
        if scales is not None and len(qweight.shape) == 2 and len(scales.shape) == 2 and qweight.shape[1] != scales.shape[1]:
            return AWQ  # AWQ packs along the outputs, so its qweight has fewer columns than its scales
        return GPTQ
    if weight is not None and weight.dtype == "U32" and "scales" in parts:
        return MLX_AFFINE
    weight = weight if weight is not None else parts.get("weight_packed")  # compressed-tensors mxfp4-pack-quantized
    if weight is not None and weight.dtype == "U8" and scale is not None and scale.dtype in E8M0_DTYPES:
        return MXFP4
    return None


def layout(fmt: str, parts: Mapping[str, Shaped], bits: int | None = None) -> Layout:
    """The logical shape [out, in], the bits and the shape problems of one weight stored in `fmt`."""
    return {GPTQ: _gptq, AWQ: _awq, MXFP4: _mxfp4, MLX_AFFINE: _mlx}[fmt](parts, bits)


def _gptq(parts: Mapping[str, Shaped], _bits: int | None) -> Layout:
    q, zeros, scales, g_idx = (parts.get(k) for k in ("qweight", "qzeros", "scales", "g_idx"))
    if q is None or len(q.shape) != 2:
        return None, None, []
    out = q.shape[1]
    inp = g_idx.shape[0] if g_idx is not None and len(g_idx.shape) == 1 else None
    bits = None
    if inp:
        bits = q.shape[0] * 32 // inp
    elif zeros is not None and len(zeros.shape) == 2 and out:
        bits = zeros.shape[1] * 32 // out
        inp = q.shape[0] * 32 // bits if bits else None
    problems = []
    if scales is not None and len(scales.shape) == 2 and scales.shape[1] != out:
        problems.append(f"scales has {scales.shape[1]} columns but qweight has {out} outputs")
    if zeros is not None and bits and len(zeros.shape) == 2 and zeros.shape[1] * 32 != out * bits:
        problems.append(f"qzeros has {zeros.shape[1]} int32 columns, {bits}-bit zeros of {out} outputs need {out * bits // 32}")
    return ((out, inp) if inp else None), bits, problems


def _awq(parts: Mapping[str, Shaped], _bits: int | None) -> Layout:
    q, zeros, scales = (parts.get(k) for k in ("qweight", "qzeros", "scales"))
    if q is None or scales is None or len(q.shape) != 2 or len(scales.shape) != 2 or not scales.shape[1]:
        return None, None, []
    out, inp = scales.shape[1], q.shape[0]
    bits = q.shape[1] * 32 // out
    problems = []
    if zeros is not None and len(zeros.shape) == 2 and zeros.shape[1] != q.shape[1]:
        problems.append(f"qzeros has {zeros.shape[1]} int32 columns but qweight has {q.shape[1]}")
    return (out, inp), bits, problems


def _mxfp4(parts: Mapping[str, Shaped], _bits: int | None) -> Layout:
    w, scale = parts.get("weight") or parts.get("weight_packed"), parts.get("weight_scale")
    if w is None or len(w.shape) < 2:
        return None, 4, []
    shape = (*w.shape[:-1], w.shape[-1] * 2)
    problems = []
    want = (*shape[:-1], shape[-1] // MX_GROUP)
    if scale is not None and tuple(scale.shape) != want:
        problems.append(f"weight_scale shape {list(scale.shape)} != {list(want)} for {MX_GROUP}-element MX blocks")
    return shape, 4, problems


def _mlx(parts: Mapping[str, Shaped], bits: int | None) -> Layout:
    w, scales, biases = parts.get("weight"), parts.get("scales"), parts.get("biases")
    if w is None or len(w.shape) < 2:
        return None, bits, []
    problems = []
    if scales is not None and biases is not None and scales.shape != biases.shape:
        problems.append(f"scales {list(scales.shape)} and biases {list(biases.shape)} differ")
    if scales is not None and scales.shape[:-1] != w.shape[:-1]:
        problems.append(f"scales has {list(scales.shape[:-1])} rows but the weight has {list(w.shape[:-1])}")
    shape = (*w.shape[:-1], w.shape[-1] * 32 // bits) if bits else None
    return shape, bits, problems


def hollow(fmt: str, module: str, out: int, inp: int, *, bits: int = 4, group: int = 128,
           scale_dtype: str = "F16") -> list[tuple[str, str, tuple[int, ...]]]:
    """The stored tensors (name, dtype, shape) of one weight [out, inp] in `fmt`, as its writer lays them out."""
    per_word = 32 // bits
    zeros = (f"{module}.qzeros", "I32", (inp // group, out // per_word))
    scales = (f"{module}.scales", scale_dtype, (inp // group, out))
    if fmt == GPTQ:
        return [(f"{module}.qweight", "I32", (inp // per_word, out)), zeros, scales, (f"{module}.g_idx", "I32", (inp,))]
    if fmt == AWQ:
        return [(f"{module}.qweight", "I32", (inp, out // per_word)), zeros, scales]
    if fmt == MXFP4:
        return [(f"{module}.weight", "U8", (out, inp // 2)), (f"{module}.weight_scale", "U8", (out, inp // MX_GROUP))]
    if fmt == MLX_AFFINE:
        return [(f"{module}.weight", "U32", (out, inp // per_word)), (f"{module}.scales", scale_dtype, (out, inp // group)),
                (f"{module}.biases", scale_dtype, (out, inp // group))]
    if fmt == MODELOPT_FP8:
        return [(f"{module}.weight", "F8_E4M3", (out, inp)), (f"{module}.weight_scale", "F32", ()),
                (f"{module}.input_scale", "F32", ())]
    raise ValueError(f"no hollow layout for {fmt!r}")

"""GPTQ v1 (`checkpoint_format: gptq`, as GPTQModel and AutoGPTQ write it and vLLM's GPTQ path reads it): packing
compressed-tensors' INT weights into it, and dequantizing it back.

One quantized Linear [out, in] with `bits`-bit values and `groups` scale groups is stored as
- `qweight` I32 [in * bits / 32, out]: unsigned values `q + 2^(bits-1)`, packed along the inputs, lowest bits first;
- `qzeros` I32 [groups, out * bits / 32]: the zero point minus one, packed along the outputs (v1's historical
  offset: AutoGPTQ subtracted 1 when packing, and v1 readers add it back; vLLM `auto_gptq.py` reads
  `checkpoint_format: gptq` that way). Symmetric weights have zero point 2^(bits-1), so every word is 0x77777777
  at 4 bits;
- `scales` F16 [groups, out];
- `g_idx` I32 [in]: the scale group of each input. With `desc_act` (activation order) groups follow the order of
  the activations, so `g_idx` is not `i // group_size`; without it, it is.

compressed-tensors `pack-quantized` (INT, symmetric) holds the same integers: signed values packed along the
inputs of `weight_packed` [out, in * bits / 32] (`formats.packing`), `weight_scale` [out, groups] and, with
llm-compressor's group activation order, `weight_g_idx` [in]. Repacking keeps every integer; the scales become F16,
which is exact for BF16 scales in F16's normal range and refused otherwise (`ScaleNotExact`), so the dequantized
weight is the same, value for value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtpforge.formats.packing import unpack_int

if TYPE_CHECKING:
    import torch

QWEIGHT, QZEROS, SCALES, G_IDX = "qweight", "qzeros", "scales", "g_idx"
STORED = (QWEIGHT, QZEROS, SCALES, G_IDX)  # in the order they are written
DESCRIPTION = f"GPTQ v1 ({', '.join(STORED)})"
# compressed-tensors' tensors of one INT weight, as llm-compressor writes them
CT_PACKED, CT_SCALE, CT_ZERO_POINT, CT_SHAPE, CT_G_IDX = ("weight_packed", "weight_scale", "weight_zero_point",
                                                          "weight_shape", "weight_g_idx")
CT_COMPANIONS = (CT_SCALE, CT_ZERO_POINT, CT_SHAPE, CT_G_IDX)


class ScaleNotExact(ValueError):
    """A scale that F16 cannot hold exactly (outside F16's normal range)."""


def stored_shapes(out: int, inp: int, bits: int, groups: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """suffix -> (dtype, shape) of one GPTQ weight [out, inp]."""
    return {QWEIGHT: ("I32", (inp * bits // 32, out)), QZEROS: ("I32", (groups, out * bits // 32)),
            SCALES: ("F16", (groups, out)), G_IDX: ("I32", (inp,))}


def from_compressed_tensors(packed: torch.Tensor, scale: torch.Tensor, g_idx: torch.Tensor | None, *, bits: int,
                            shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The GPTQ v1 tensors of one symmetric compressed-tensors INT weight [out, inp] (see the module docstring).

    Raises:
        ScaleNotExact: a scale F16 would round.
    """
    import torch

    from mtpforge.formats.packing import pack_int

    out, inp = shape
    groups = scale.shape[1]
    values = unpack_int(packed, bits, (out, inp))  # signed, in [-2^(bits-1), 2^(bits-1))
    # pack_int stores `v + 2^(bits-1)`: the signed values give GPTQ's unsigned ones, -1 gives the zero point minus one
    qweight = pack_int(values.t().contiguous(), bits, dim=0)
    qzeros = pack_int(torch.full((groups, out), -1, dtype=torch.int8), bits, dim=1)
    scales = scale.t().contiguous().to(torch.float16)
    if not torch.equal(scales.to(scale.dtype), scale.t()):
        bad = scale.t()[scales.to(scale.dtype) != scale.t()]
        raise ScaleNotExact(f"{bad.numel()} scale(s) F16 cannot hold exactly (e.g. {float(bad[0]):.6g})")
    if g_idx is None:
        g_idx = torch.arange(inp, dtype=torch.int32) // (inp // groups)
    return {QWEIGHT: qweight, QZEROS: qzeros, SCALES: scales, G_IDX: g_idx.to(torch.int32).contiguous()}


def is_ordered(g_idx: torch.Tensor, groups: int) -> bool:
    """Whether `g_idx` is the plain `i // group_size` (no activation order): what `desc_act: false` declares."""
    import torch

    inp = g_idx.shape[0]
    return bool(torch.equal(g_idx.to(torch.int64), torch.arange(inp) // (inp // groups)))


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                    *, bits: int) -> torch.Tensor:
    """The BF16 weight [out, in] of GPTQ v1 tensors: `(q - (z + 1)) * scale[g_idx]`, computed exactly in float32 and
    rounded once to BF16 (what compressed-tensors' BF16 product gives for the same integers and scales)."""
    import torch

    inp, out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    q = _unpack(qweight, bits, dim=0)
    zeros = _unpack(qzeros, bits, dim=1) + 1
    groups = scales.shape[0]
    g = g_idx.long() if g_idx is not None else torch.arange(inp) // (inp // groups)
    w = (q - zeros[g]).float() * scales[g].float()
    return w.t().contiguous().to(torch.bfloat16).reshape(out, inp)


def _unpack(words: torch.Tensor, bits: int, *, dim: int) -> torch.Tensor:
    """GPTQ's unsigned values of int32 `words`, lowest bits first, unpacked along `dim` (by its own shifts, not a
    compressed-tensors helper, so a test of the packing is a test of the layout)."""
    import torch

    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    w = words.to(torch.int32)
    if dim == 0:
        values = (w.unsqueeze(1) >> shifts.view(1, per_word, 1)) & mask  # [rows, per_word, cols]
        return values.reshape(w.shape[0] * per_word, w.shape[1])
    values = (w.unsqueeze(2) >> shifts.view(1, 1, per_word)) & mask  # [rows, cols, per_word]
    return values.reshape(w.shape[0], w.shape[1] * per_word)


def quantization_config(*, bits: int, group_size: int | None, desc_act: bool, dynamic: dict[str, dict[str, object]],
                        damp_percent: float | None, quantizer: list[str]) -> dict[str, object]:
    """config.json's `quantization_config` and, the same document, `quantize_config.json` as GPTQModel writes them
    (vLLM reads either; `dynamic`'s `-:` rules leave modules unquantized)."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size or -1, "desc_act": desc_act, "sym": True,
            "lm_head": False, "checkpoint_format": "gptq", "pack_dtype": "int32", "dynamic": dynamic,
            "damp_percent": damp_percent, "true_sequential": True, "static_groups": False,
            "meta": {"quantizer": quantizer, "damp_percent": damp_percent}}

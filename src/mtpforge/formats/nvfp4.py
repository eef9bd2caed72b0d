"""NVFP4 weights (FP4 E2M1 values in groups of 16, FP8 E4M3 group scales, one FP32 global scale),
computed by compressed-tensors itself so the bytes are the ones its compressor writes.

The global scale is `448 * 6 / amax` (FP8 max times FP4 max over the tensor's
largest magnitude: compressed-tensors `generate_gparam`). Engines fuse q/k/v,
gate/up and in_proj_qkv/z into one layer with one global scale, so the caller
passes the amax of the whole fused group (llm-compressor's
`update_fused_layer_weight_global_scales` does the same).
"""

from __future__ import annotations

import torch

GROUP = 16


def quantize_nvfp4(w: torch.Tensor, amax: float) -> dict[str, torch.Tensor]:
    """`weight_packed` (uint8 [out, in/2]), `weight_scale` (float8_e4m3fn [out, in/16]) and
    `weight_global_scale` (float32 [1])."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import NVFP4A16
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    out, inp = w.shape
    if inp % GROUP:
        raise ValueError(f"{inp} inputs do not divide into NVFP4 groups of {GROUP}")
    args = NVFP4A16["weights"]
    global_scale = global_scale_of(amax)
    groups = w.reshape(out, inp // GROUP, GROUP)  # min / max in the weight's own dtype, as llm-compressor's observers take them
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=global_scale)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = NVFP4PackedCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_global_scale": global_scale, "weight_zero_point": zero_point}, scheme)
    return {"weight_packed": state["weight_packed"], "weight_scale": state["weight_scale"], "weight_global_scale": global_scale}


def global_scale_of(amax: float) -> torch.Tensor:
    """compressed-tensors' global scale for a tensor whose largest magnitude is `amax`: float32 [1]."""
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    return generate_gparam(torch.tensor([-amax]), torch.tensor([amax]))


def stored_tensors(w: torch.Tensor, weight_amax: float, input_amax: float | None, *, modelopt: bool) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight (`Scheme.companions`): compressed-tensors' layout, or modelopt's with the
    global scales inverted into `weight_scale_2` and `input_scale` (0-d)."""
    t = quantize_nvfp4(w, weight_amax)
    if input_amax is not None:
        t["input_global_scale"] = global_scale_of(input_amax)
    if not modelopt:
        return t
    return {"weight": t["weight_packed"], "weight_scale": t["weight_scale"],
            "weight_scale_2": (1 / t["weight_global_scale"]).reshape(()),
            "input_scale": (1 / t["input_global_scale"]).reshape(())}

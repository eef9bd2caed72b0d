"""NVFP4 weights (FP4 E2M1 values in groups of 16, FP8 E4M3 group scales, one FP32 global scale),
computed by compressed-tensors itself so the bytes are the ones its compressor writes.

The global scale is `448 * 6 / amax` (FP8 max times FP4 max over the tensor's
largest magnitude: compressed-tensors `generate_gparam`). Engines fuse q/k/v,
gate/up and in_proj_qkv/z into one layer with one global scale, so the caller
passes the amax of the whole fused group (llm-compressor's
`update_fused_layer_weight_global_scales` does the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where tensors are made: the test factory reads the configs below without it
    import torch

GROUP = 16


def quantize_nvfp4(w: torch.Tensor, amax: float) -> dict[str, torch.Tensor]:
    """`weight_packed` (uint8 [out, in/2]), `weight_scale` (float8_e4m3fn [out, in/16]) and `weight_global_scale` (float32 [1])."""
    import torch
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import NVFP4A16
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    out, inp = w.shape
    if inp % GROUP:
        raise ValueError(f"{inp} inputs do not divide into NVFP4 groups of {GROUP}")
    args = NVFP4A16["weights"]
    global_scale = generate_gparam(torch.tensor([-amax]), torch.tensor([amax]))
    groups = w.reshape(out, inp // GROUP, GROUP)  # min / max in the weight's own dtype, as llm-compressor's observers take them
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=global_scale)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = NVFP4PackedCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_global_scale": global_scale, "weight_zero_point": zero_point}, scheme)
    return {"weight_packed": state["weight_packed"], "weight_scale": state["weight_scale"], "weight_global_scale": global_scale}


def weights_config() -> dict[str, object]:
    """The `weights` block compressed-tensors writes for NVFP4A16."""
    return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": GROUP, "dynamic": False,
            "actorder": None, "observer": "minmax", "observer_kwargs": {}}


# Stored names, dtypes and shapes per layout. compressed-tensors keeps global scales as multipliers;
# modelopt keeps their inverses (`weight_scale_2`, `input_scale`) as 0-d tensors (its converter inverts them back).
def stored_shapes(out: int, inp: int, *, layout: str, activations: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    if layout == "modelopt":
        return {"weight": ("U8", (out, inp // 2)), "weight_scale": ("F8_E4M3", (out, inp // GROUP)), "weight_scale_2": ("F32", ()),
                "input_scale": ("F32", ())}
    shapes = {"weight_packed": ("U8", (out, inp // 2)), "weight_scale": ("F8_E4M3", (out, inp // GROUP)), "weight_global_scale": ("F32", (1,))}
    if activations:
        shapes["input_global_scale"] = ("F32", (1,))
    return shapes


def stored_tensors(w: torch.Tensor, weight_amax: float, input_amax: float | None, *, layout: str) -> dict[str, torch.Tensor]:
    """The tensors of `stored_shapes` for one weight."""
    import torch
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    t = quantize_nvfp4(w, weight_amax)
    if input_amax is not None:
        t["input_global_scale"] = generate_gparam(torch.tensor([-input_amax]), torch.tensor([input_amax]))
    if layout != "modelopt":
        return t
    return {"weight": t["weight_packed"], "weight_scale": t["weight_scale"], "weight_scale_2": (1 / t["weight_global_scale"]).reshape(()),
            "input_scale": (1 / t["input_global_scale"]).reshape(())}


def ct_config(weights: dict[str, object], activations: bool) -> tuple[dict[str, object], dict[str, object] | None]:
    """`weights` and `input_activations` blocks of the compressed-tensors config (NVFP4 or NVFP4A16)."""
    acts = {**weights, "dynamic": "local", "observer": "static_minmax"} if activations else None
    return weights, acts


def modelopt_configs(exclude: list[str]) -> tuple[dict[str, object], dict[str, object]]:
    """config.json's `quantization_config` and `hf_quant_config.json` for modelopt NVFP4 (what vLLM's modelopt_fp4 reads)."""
    producer = {"name": "modelopt", "version": "0.39.0"}
    config = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": GROUP, "ignore": exclude, "producer": producer,
              "kv_cache_scheme": None}
    hf_quant = {"producer": producer, "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": GROUP,
                                                       "exclude_modules": exclude}}
    return config, hf_quant

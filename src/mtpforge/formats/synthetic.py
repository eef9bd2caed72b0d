"""How each quantized format stores one weight: the stored tensors (names,
dtypes, shapes) and the config that declares them.

Values are structurally valid but not a real quantization of anything: scales
are positive, `weight_shape` is exact, packed words are random. That is all
the static checks need; real quantization lives with `quantize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtpforge.formats.values import encode
from mtpforge.checkpoint.writer import TensorData
from mtpforge.formats.nvfp4 import modelopt_configs

# Name -> (format, bits, group size, symmetric, activations quantized)
FORMATS: dict[str, tuple[str, int, int | None, bool, bool]] = {
    "w4a16": ("pack-quantized", 4, 32, True, False),
    "w4a16-asym": ("pack-quantized", 4, 32, False, False),
    "w8a16": ("pack-quantized", 8, None, True, False),  # channel
    "nvfp4": ("nvfp4-pack-quantized", 4, 16, True, True),
    "modelopt-nvfp4": ("modelopt-nvfp4", 4, 16, True, True),
}
CT_IGNORE = ["lm_head", "re:.*visual.*", "re:.*linear_attn.in_proj_(a|b|ba)$", "re:.*mlp.gate$", "re:.*shared_expert_gate$",
             "re:.*mlp.experts.*", "re:^mtp.*"]
MODELOPT_EXCLUDE = ["lm_head", "model.visual*", "*linear_attn.in_proj_a", "*linear_attn.in_proj_b", "*linear_attn.in_proj_ba",
                    "*mlp.gate", "*shared_expert_gate", "*mlp.experts*", "mtp*"]


@dataclass(frozen=True)
class Format:
    """One quantized format of the factory."""

    name: str

    @property
    def spec(self) -> tuple[str, int, int | None, bool, bool]:
        return FORMATS[self.name]

    @property
    def is_modelopt(self) -> bool:
        return self.spec[0] == "modelopt-nvfp4"

    def tensors(self, weight_name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[TensorData]:
        """The stored tensors standing for `weight_name` of logical `shape` [out, in]."""
        fmt, bits, group, symmetric, _ = self.spec
        module = weight_name.rsplit(".", 1)[0]
        out, inp = shape
        if fmt == "pack-quantized":
            groups = inp // group if group else 1
            items = [
                _ints(f"{module}.weight_packed", "I32", (out, inp * bits // 32), rng),
                _floats(f"{module}.weight_scale", (out, groups), rng),
                TensorData(f"{module}.weight_shape", "I64", (2,), encode("I64", np.array(shape))),
            ]
            if not symmetric:
                items.append(_ints(f"{module}.weight_zero_point", "I32", (math.ceil(out * bits / 32), groups), rng))
            return items
        fp8 = TensorData(f"{module}.weight_scale", "F8_E4M3", (out, inp // 16),
                         rng.integers(0x30, 0x40, size=out * (inp // 16), dtype=np.uint8).tobytes())
        packed = rng.integers(0, 256, size=out * inp // 2, dtype=np.uint8).tobytes()
        if fmt == "nvfp4-pack-quantized":
            return [TensorData(f"{module}.weight_packed", "U8", (out, inp // 2), packed), fp8,
                    _scalar(f"{module}.weight_global_scale", (1,), 448.0 * 6 / 0.1),
                    _scalar(f"{module}.input_global_scale", (1,), 448.0 * 6 / 4.0)]
        return [TensorData(f"{module}.weight", "U8", (out, inp // 2), packed), fp8,
                _scalar(f"{module}.weight_scale_2", (), 0.1 / (448.0 * 6)),
                _scalar(f"{module}.input_scale", (), 4.0 / (448.0 * 6))]

    def config(self) -> dict[str, Any]:
        """The `quantization_config` of config.json for this format."""
        fmt, bits, group, symmetric, acts = self.spec
        if self.is_modelopt:
            return modelopt_configs(list(MODELOPT_EXCLUDE))[0]
        weights = {"num_bits": bits, "type": "float" if fmt.startswith("nvfp4") else "int", "symmetric": symmetric,
                   "strategy": "tensor_group" if fmt.startswith("nvfp4") else ("group" if group else "channel"),
                   "group_size": group, "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
        act = dict(weights, dynamic="local", observer="static_minmax") if acts else None
        return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": act,
                                              "output_activations": None, "format": fmt}},
                "ignore": list(CT_IGNORE), "kv_cache_scheme": None, "sparsity_config": {}, "version": "0.19.0"}

    def hf_quant_config(self) -> dict[str, Any] | None:
        """modelopt's `hf_quant_config.json`, or None for compressed-tensors formats."""
        return modelopt_configs(list(MODELOPT_EXCLUDE))[1] if self.is_modelopt else None


def _ints(name: str, dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> TensorData:
    return TensorData(name, dtype, shape, rng.integers(-(2**31), 2**31 - 1, size=math.prod(shape), dtype=np.int32).tobytes())


def _floats(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> TensorData:
    return TensorData(name, "BF16", shape, encode("BF16", rng.uniform(0.001, 0.01, size=shape)))


def _scalar(name: str, shape: tuple[int, ...], value: float) -> TensorData:
    return TensorData(name, "F32", shape, encode("F32", np.full(shape, value)))

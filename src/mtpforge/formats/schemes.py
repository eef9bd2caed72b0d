"""The quantization schemes mtpforge writes: one frozen `Scheme` each, in one registry.

A scheme says what its weights become (kind, bits, symmetry, the default group
of compressed-tensors 0.19's presets, whether activations are quantized too),
which checkpoint format holds it, the stored tensors standing for one weight,
and the quantization config declaring them. `quant` plans and writes with it,
`formats.synthetic` builds test fixtures from it, and the CLI offers its names.
Torch-free: `Scheme.quantize` imports the arithmetic when a weight is quantized.
"""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtpforge.formats.stored import CT_INT, CT_NVFP4, MODELOPT_NVFP4

if TYPE_CHECKING:
    import torch

COMPRESSED_TENSORS = "compressed-tensors"
MODELOPT = "modelopt"
GPTQ_FORMAT = "gptq"  # symmetric INT, written as compressed-tensors and repacked (`formats.gptq`, `quant.gptq_output`)
CHECKPOINT_FORMATS = (COMPRESSED_TENSORS, MODELOPT, GPTQ_FORMAT)
INT, FP4 = "int", "fp4"
NVFP4_GROUP = 16
CT_VERSION = "0.19.0"
# The producer is who wrote the file: mtpforge (its own NVFP4 writer), not an nvidia-modelopt release it never ran.
MODELOPT_PRODUCER = {"name": "mtpforge", "version": importlib.metadata.version("mtpforge")}


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme as one checkpoint format stores it."""

    name: str
    kind: str  # INT or FP4
    bits: int
    symmetric: bool
    default_group: int | None  # inputs per scale; None: one scale per output channel
    activations: bool = False  # FP4 activations: input scales calibrated on text
    checkpoint_format: str = COMPRESSED_TENSORS

    @property
    def stored_format(self) -> str:
        """The stored format `formats.stored` recognises this scheme's weights as."""
        if self.kind == INT:
            return CT_INT
        return MODELOPT_NVFP4 if self.checkpoint_format == MODELOPT else CT_NVFP4

    def in_format(self, checkpoint_format: str) -> Scheme | None:
        """This scheme as `checkpoint_format` stores it, or None when that format does not hold it."""
        if checkpoint_format == self.checkpoint_format:
            return self
        same = [s for s in SCHEMES.values() if s.checkpoint_format == checkpoint_format
                and (s.kind, s.bits, s.symmetric, s.activations) == (self.kind, self.bits, self.symmetric, self.activations)]
        return same[0] if same else None

    def companions(self, out: int, inp: int, group: int | None, *,
                   scale_dtype: str = "BF16") -> dict[str, tuple[str, tuple[int, ...]]]:
        """The stored tensors of one weight [out, inp], in the order they are written: suffix -> (dtype, shape).

        compressed-tensors keeps global scales as multipliers; modelopt keeps their
        inverses (`weight_scale_2`, `input_scale`) as 0-d tensors.
        """
        if self.kind == INT:
            groups = inp // group if group else 1
            stored = {"weight_packed": ("I32", (out, math.ceil(inp * self.bits / 32))),
                      "weight_scale": (scale_dtype, (out, groups)), "weight_shape": ("I64", (2,))}
            if not self.symmetric:
                stored["weight_zero_point"] = ("I32", (math.ceil(out * self.bits / 32), groups))
            return stored
        scale = ("F8_E4M3", (out, inp // NVFP4_GROUP))
        if self.checkpoint_format == MODELOPT:
            return {"weight": ("U8", (out, inp // 2)), "weight_scale": scale, "weight_scale_2": ("F32", ()),
                    "input_scale": ("F32", ())}
        stored = {"weight_packed": ("U8", (out, inp // 2)), "weight_scale": scale, "weight_global_scale": ("F32", (1,))}
        if self.activations:
            stored["input_global_scale"] = ("F32", (1,))
        return stored

    def quantize(self, w: torch.Tensor, *, group: int | None, amax: float | None = None,
                 input_amax: float | None = None) -> dict[str, torch.Tensor]:
        """The tensors of `companions` for the weight `w` (`amax`: the largest magnitude of its fused group, for FP4;
        `input_amax`: the largest |input| its layer saw, for FP4 activations)."""
        if self.kind == INT:
            from mtpforge.formats.int_affine import quantize_int

            return quantize_int(w, bits=self.bits, group_size=group, symmetric=self.symmetric)
        from mtpforge.formats.nvfp4 import stored_tensors

        if amax is None:
            raise ValueError(f"{self.name} needs the amax of the weight's fused group")
        return stored_tensors(w, amax, input_amax if self.activations else None, modelopt=self.checkpoint_format == MODELOPT)

    def weights_config(self, group: int | None, *, actorder: bool = False) -> dict[str, Any]:
        """The compressed-tensors `weights` arguments (what llm-compressor is given, too)."""
        fp4 = self.kind == FP4
        return {"num_bits": self.bits, "type": "float" if fp4 else "int", "symmetric": self.symmetric,
                "strategy": "tensor_group" if fp4 else ("group" if group else "channel"), "group_size": group, "dynamic": False,
                "actorder": "static" if actorder else None, "observer": "minmax", "observer_kwargs": {}}

    def quantization_config(self, ignore: list[str], *, group: int | None,
                            actorder: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """config.json's `quantization_config`, and modelopt's `hf_quant_config.json` (None for compressed-tensors).

        `ignore` is in the format's own syntax: exact names and `re:` patterns for
        compressed-tensors, fnmatch wildcards for modelopt (`modelopt_pattern`).
        """
        if self.checkpoint_format == MODELOPT:
            config = {"quant_method": MODELOPT, "quant_algo": "NVFP4", "group_size": NVFP4_GROUP, "ignore": ignore,
                      "producer": dict(MODELOPT_PRODUCER), "kv_cache_scheme": None}
            hf_quant = {"producer": dict(MODELOPT_PRODUCER), "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                                                                        "group_size": NVFP4_GROUP, "exclude_modules": ignore}}
            return config, hf_quant
        weights = self.weights_config(group, actorder=actorder)
        acts = {**weights, "dynamic": "local", "observer": "static_minmax"} if self.activations else None
        fmt = self.stored_format
        return {"quant_method": COMPRESSED_TENSORS, "format": fmt, "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                              "output_activations": None, "format": fmt}},
                "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {}, "version": CT_VERSION}, None


def modelopt_pattern(ignore: str) -> str:
    """A compressed-tensors ignore entry as modelopt's wildcard: `re:^prefix.*` -> `prefix*`; exact names stay."""
    if not ignore.startswith("re:"):
        return ignore
    return ignore[len("re:"):].lstrip("^").replace("\\.", ".").replace(".*", "*")


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("w4a16", INT, 4, True, 128),
    Scheme("w4a16-asym", INT, 4, False, 128),
    Scheme("w8a16", INT, 8, True, 128),
    Scheme("w8a16-asym", INT, 8, False, 128),
    Scheme("nvfp4a16", FP4, 4, True, NVFP4_GROUP),
    Scheme("nvfp4", FP4, 4, True, NVFP4_GROUP, activations=True),
    Scheme("modelopt-nvfp4", FP4, 4, True, NVFP4_GROUP, activations=True, checkpoint_format=MODELOPT),
)}
# What `quantize --scheme` offers; `--format` then picks the checkpoint format that holds it.
QUANTIZE_SCHEMES = tuple(n for n, s in SCHEMES.items() if s.checkpoint_format == COMPRESSED_TENSORS)

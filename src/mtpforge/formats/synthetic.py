"""Synthetic quantized weights for test fixtures: the stored tensors of a `Scheme`, with structurally valid values.

Values are not a real quantization of anything: scales are positive,
`weight_shape` is exact, packed words are random. That is all the static
checks need; real quantization lives with `quantize`. The tensors come back as
plain `RawTensor` tuples (the test factory writes them into shards), and the
configs from the one writer `quantize` uses (`Scheme.quantization_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mtpforge.formats.schemes import FP4, MODELOPT, SCHEMES, Scheme
from mtpforge.formats.values import encode

# Fixture name -> (scheme, group size): the groups the fixtures were first written with (32, per channel).
FORMATS: dict[str, tuple[str, int | None]] = {
    "w4a16": ("w4a16", 32),
    "w4a16-asym": ("w4a16-asym", 32),
    "w8a16": ("w8a16", None),
    "nvfp4": ("nvfp4", 16),
    "modelopt-nvfp4": ("modelopt-nvfp4", 16),
}
CT_IGNORE = ["lm_head", "re:.*visual.*", "re:.*linear_attn.in_proj_(a|b|ba)$", "re:.*mlp.gate$", "re:.*shared_expert_gate$",
             "re:.*mlp.experts.*", "re:^mtp.*"]
MODELOPT_EXCLUDE = ["lm_head", "model.visual*", "*linear_attn.in_proj_a", "*linear_attn.in_proj_b", "*linear_attn.in_proj_ba",
                    "*mlp.gate", "*shared_expert_gate", "*mlp.experts*", "mtp*"]
# The synthetic FP4 global scales are those of weights whose largest |value| is 0.1 and of inputs up to 4.0.
FP8_MAX_TIMES_FP4_MAX = 448.0 * 6
WEIGHT_AMAX, INPUT_AMAX = 0.1, 4.0


class RawTensor(NamedTuple):
    """One stored tensor: name, safetensors dtype, shape, little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Format:
    """One quantized format of the test factory (a key of FORMATS)."""

    name: str

    @property
    def scheme(self) -> Scheme:
        return SCHEMES[FORMATS[self.name][0]]

    @property
    def group(self) -> int | None:
        return FORMATS[self.name][1]

    def tensors(self, weight_name: str, shape: tuple[int, ...], rng: np.random.Generator) -> list[RawTensor]:
        """The stored tensors standing for `weight_name` of logical `shape` [out, in]."""
        module = weight_name.rsplit(".", 1)[0]
        out, inp = shape
        stored = self.scheme.companions(out, inp, self.group)
        # FP4 group scales are drawn before the packed bytes: the order of the fixtures' first version,
        # kept so they stay the same.
        order = sorted(stored, key=lambda k: stored[k][0] != "F8_E4M3") if self.scheme.kind == FP4 else list(stored)
        data = {key: _random(key, *stored[key], shape, rng) for key in order}
        return [RawTensor(f"{module}.{key}", dtype, dims, data[key]) for key, (dtype, dims) in stored.items()]

    def config(self) -> dict[str, Any]:
        """The `quantization_config` of config.json for this format."""
        return self.scheme.quantization_config(self._ignore(), group=self.group)[0]

    def hf_quant_config(self) -> dict[str, Any] | None:
        """modelopt's `hf_quant_config.json`, or None for compressed-tensors formats."""
        return self.scheme.quantization_config(self._ignore(), group=self.group)[1]

    def _ignore(self) -> list[str]:
        return list(MODELOPT_EXCLUDE if self.scheme.checkpoint_format == MODELOPT else CT_IGNORE)


def _random(key: str, dtype: str, shape: tuple[int, ...], logical: tuple[int, ...], rng: np.random.Generator) -> bytes:
    n = math.prod(shape)
    if dtype == "I32":
        return rng.integers(-(2**31), 2**31 - 1, size=n, dtype=np.int32).tobytes()
    if dtype == "I64":  # the logical shape, exact
        return encode("I64", np.array(logical))
    if dtype == "BF16":
        return encode("BF16", rng.uniform(0.001, 0.01, size=shape))
    if dtype == "F8_E4M3":  # positive E4M3 codes between 0.0078 and 0.0156 (bytes 0x30-0x3F)
        return rng.integers(0x30, 0x40, size=n, dtype=np.uint8).tobytes()
    if dtype == "U8":
        return rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    if dtype == "F32":  # a global scale [1] (compressed-tensors), or its inverse as a 0-d tensor (modelopt)
        amax = WEIGHT_AMAX if key.startswith("weight") else INPUT_AMAX
        return encode("F32", np.full(shape, FP8_MAX_TIMES_FP4_MAX / amax if shape else amax / FP8_MAX_TIMES_FP4_MAX))
    raise ValueError(f"no synthetic values for {dtype}")

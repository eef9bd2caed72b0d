"""Recognise what each stored tensor stands for: a plain weight, or a quantized
weight spread over a main tensor and its companions.

- compressed-tensors `pack-quantized` (INT): main tensor `X.weight_packed` I32 `[out, in*bits/32]`;
  companions `weight_scale`, `weight_shape`, optional `weight_zero_point`, `weight_g_idx`.
- compressed-tensors `nvfp4-pack-quantized`: main tensor `X.weight_packed` U8 `[out, in/2]`;
  companions `weight_scale` F8_E4M3 `[out, in/16]`, `weight_global_scale` F32 `[1]`, optional `input_global_scale`.
- modelopt NVFP4: main tensor `X.weight` U8 `[out, in/2]`;
  companions `weight_scale` F8_E4M3 `[out, in/16]`, `weight_scale_2` F32, optional `input_scale`.
- FP8 (compressed-tensors `float-quantized`, modelopt FP8, `quant_method: fp8`): main tensor `X.weight` F8_E4M3;
  companions `weight_scale` (DeepSeek's block FP8: `weight_scale_inv`), optional `input_scale`.
- GPTQ, AWQ, MXFP4 and MLX affine: `formats.foreign`.

The logical shape of an INT-packed weight is read from `weight_shape` (two
integers) when a reader is given; the others follow from the packed shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mtpforge.formats import foreign


class StoredTensor(Protocol):
    """One tensor as a shard header lists it (`checkpoint.header.TensorInfo` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def shard(self) -> str: ...
    @property
    def begin(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def numel(self) -> int: ...
    @property
    def nbytes(self) -> int: ...


# Parameter suffixes that only ever accompany a quantized weight.
COMPANION_SUFFIXES = (
    "weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx",
    "weight_global_scale", "input_global_scale", "weight_scale_2", "input_scale", "weight_scale_inv",
    *foreign.INT_SUFFIXES,
)
# Every suffix that groups stored tensors into one logical weight.
_GROUPED = frozenset((*COMPANION_SUFFIXES, *foreign.MLX_SUFFIXES))
DENSE = "dense"
CT_INT = "pack-quantized"
CT_NVFP4 = "nvfp4-pack-quantized"
MODELOPT_NVFP4 = "modelopt-nvfp4"
FP8 = "fp8"
BROKEN = "unrecognised"
GPTQ, AWQ, MXFP4, MLX_AFFINE = foreign.GPTQ, foreign.AWQ, foreign.MXFP4, foreign.MLX_AFFINE

# Stored format -> the config formats that declare it (compressed-tensors `format`, or modelopt's algorithm as parsed).
DECLARED_AS = {
    CT_INT: ("pack-quantized",),
    CT_NVFP4: ("nvfp4-pack-quantized",),
    MODELOPT_NVFP4: ("modelopt-nvfp4",),
    FP8: ("float-quantized", "naive-quantized", "modelopt-fp8", "fp8", "mxfp8"),  # MXFP8: F8 values, E8M0 scales
    GPTQ: ("gptq",),
    AWQ: ("awq",),
    MXFP4: ("mxfp4", "mxfp4-pack-quantized"),
    MLX_AFFINE: ("mlx-affine",),
}
_REQUIRED = {
    CT_INT: ("weight_packed", "weight_scale", "weight_shape"),
    CT_NVFP4: ("weight_packed", "weight_scale", "weight_global_scale"),
    MODELOPT_NVFP4: ("weight", "weight_scale", "weight_scale_2"),
    FP8: ("weight",),  # and a scale: `weight_scale`, or `weight_scale_inv` for block FP8
    **foreign.REQUIRED,
}


@dataclass(slots=True)
class StoredWeight:
    """One logical tensor (`name`) and the stored tensors that make it up.

    Treated as immutable, but not a frozen dataclass: a frozen one takes three times longer to build, and
    `resolve` builds one per module (95,000 on a per-expert 397B MoE index)."""

    name: str
    format: str
    shape: tuple[int, ...] | None  # logical shape; None when it cannot be known
    parts: dict[str, StoredTensor]  # param suffix (or "" for a dense tensor) -> stored tensor
    missing: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())
    bits_hint: int | None = None  # MLX: the bits config.json declares (its shapes do not tell them)

    @property
    def quantized(self) -> bool:
        return self.format != DENSE

    @property
    def nbytes(self) -> int:
        return sum([p.nbytes for p in self.parts.values()])  # a list, not a generator: asked 95K times by inspect

    @property
    def dtype(self) -> str:
        """The stored dtype for a dense tensor, else the format name."""
        return self.parts[""].dtype if self.format == DENSE else self.format

    @property
    def bits(self) -> int | None:
        """Bits per weight element for quantized formats (None for dense)."""
        if self.format == CT_INT and self.shape and "weight_packed" in self.parts:
            cols = self.parts["weight_packed"].shape[-1]
            return round(cols * 32 / self.shape[-1]) if self.shape[-1] else None
        if self.format in foreign.REQUIRED:
            return foreign.layout(self.format, self.parts, self.bits_hint)[1]
        return {CT_NVFP4: 4, MODELOPT_NVFP4: 4, FP8: 8}.get(self.format)


def resolve(
    tensors: Mapping[str, StoredTensor],
    read_ints: Callable[[StoredTensor], list[int]] | None = None,
    mlx_bits: int | None = None,
    mlx_module_bits: Mapping[str, int] | None = None,
) -> dict[str, StoredWeight]:
    """Group stored tensors into logical tensors, keyed by logical name.

    Args:
        tensors: every stored tensor of the checkpoint, by name.
        read_ints: reads a small integer tensor (for `weight_shape`); optional.
        mlx_bits: the bits of an MLX affine checkpoint, from its config (the shapes leave them open).
        mlx_module_bits: the modules config.json gives their own bits (mlx-lm's 8-bit routers), by module path.

    Returns:
        One `StoredWeight` per logical tensor: `X.weight` for a quantized module,
        the tensor's own name for everything else.
    """
    # Each name is split once (400K of them on the largest indexes): companions grouped by module, the rest dense.
    modules: dict[str, dict[str, StoredTensor]] = {}
    dense: list[tuple[str, StoredTensor]] = []
    for name, info in tensors.items():
        module, _, suffix = name.rpartition(".")
        if suffix in _GROUPED and module:
            parts = modules.get(module)
            if parts is None:
                modules[module] = {suffix: info}
            else:
                parts[suffix] = info
        else:
            dense.append((name, info))
    out: dict[str, StoredWeight] = {}
    # The 768 experts of a layer share one layout: classify each layout once (not a CT INT weight, whose
    # logical shape is read from its own `weight_shape` data).
    seen: dict[tuple[object, ...], _Verdict] = {}
    for module, parts in modules.items():
        logical = module + ".weight"
        weight = tensors.get(logical)
        if weight is not None:
            parts["weight"] = weight  # a dict of our own: no copy
        bits = mlx_module_bits.get(module, mlx_bits) if mlx_module_bits else mlx_bits
        key = (bits, tuple(parts), tuple([(v.dtype, v.shape) for v in parts.values()]))
        verdict = seen.get(key)
        if verdict is None:
            verdict = _classify(parts, read_ints, bits)
            if verdict[0] != CT_INT:
                seen[key] = verdict
        out[logical] = StoredWeight(logical, verdict[0], verdict[1], parts, verdict[2], verdict[3], verdict[4])
    for name, info in dense:
        if name not in out:  # else the main tensor of a modelopt / FP8 / MXFP4 / MLX weight
            out[name] = StoredWeight(name, DENSE, info.shape, {"": info})
    return out


# format, logical shape, missing parts, problems, bits hint
_Verdict = tuple[str, tuple[int, ...] | None, tuple[str, ...], tuple[str, ...], int | None]


def _classify(
    parts: dict[str, StoredTensor], read_ints: Callable[[StoredTensor], list[int]] | None, mlx_bits: int | None = None,
) -> _Verdict:
    fmt = foreign.format_of(parts) or _format_of(parts)
    if fmt == BROKEN:
        found = ", ".join(sorted(parts))
        why = f"companions ({found}) without a recognisable quantized weight"
        return BROKEN, None, ("weight_packed or weight",), (why,), None
    missing = tuple(s for s in _REQUIRED[fmt] if s not in parts)
    if fmt in foreign.REQUIRED:
        bits = mlx_bits if fmt == MLX_AFFINE else None
        shape, _, problems = foreign.layout(fmt, parts, bits)
        return fmt, shape, missing, tuple(problems), bits
    if fmt == FP8 and "weight_scale" not in parts and "weight_scale_inv" not in parts:
        missing = ("weight_scale",)
    shape = _logical_shape(fmt, parts, read_ints)
    return fmt, shape, missing, tuple(_shape_problems(fmt, parts, shape)), None


def _format_of(parts: dict[str, StoredTensor]) -> str:
    packed, weight = parts.get("weight_packed"), parts.get("weight")
    if packed is not None:
        return {"U8": CT_NVFP4, "I32": CT_INT}.get(packed.dtype, BROKEN)
    if weight is not None and weight.dtype == "U8":
        return MODELOPT_NVFP4
    if weight is not None and weight.dtype.startswith("F8_"):
        return FP8
    return BROKEN


def _logical_shape(
    fmt: str, parts: dict[str, StoredTensor], read_ints: Callable[[StoredTensor], list[int]] | None
) -> tuple[int, ...] | None:
    if fmt == CT_INT:
        stored = parts.get("weight_shape")
        if stored is None or read_ints is None or stored.numel != 2:
            return None
        return tuple(read_ints(stored))
    main = parts.get("weight_packed") or parts.get("weight")
    if main is None or len(main.shape) != 2:
        return None
    if fmt in (CT_NVFP4, MODELOPT_NVFP4):
        return (main.shape[0], main.shape[1] * 2)
    return main.shape


def _shape_problems(fmt: str, parts: dict[str, StoredTensor], shape: tuple[int, ...] | None) -> list[str]:
    problems = []
    main = parts.get("weight_packed") or parts.get("weight")
    scale = parts.get("weight_scale")
    if main is not None and main.shape and scale is not None and len(scale.shape) == 2 and scale.shape[0] != main.shape[0]:
        problems.append(f"weight_scale has {scale.shape[0]} rows but the weight has {main.shape[0]}")
    if fmt in (CT_NVFP4, MODELOPT_NVFP4) and shape and scale is not None:
        if scale.dtype != "F8_E4M3":
            problems.append(f"weight_scale is {scale.dtype}, NVFP4 needs F8_E4M3")
        elif scale.shape != (shape[0], shape[1] // 16):
            problems.append(f"weight_scale shape {list(scale.shape)} != [{shape[0]}, {shape[1] // 16}] for 16-element groups")
    if fmt == CT_INT and shape and main is not None and len(shape) == 2:
        if shape[0] != main.shape[0]:
            problems.append(f"weight_shape says {shape[0]} rows but weight_packed has {main.shape[0]}")
        elif shape[1] and (main.shape[1] * 32) % shape[1]:
            problems.append(f"weight_packed has {main.shape[1]} int32 columns, "
                            f"which packs no whole bit width of {shape[1]} inputs")
    return problems

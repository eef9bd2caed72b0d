"""Quantization configs as the engines read them: compressed-tensors and modelopt.

Two sources may describe one checkpoint: `config.json`'s `quantization_config`
and modelopt's `hf_quant_config.json`. Each is parsed into a `QuantConfig`
that answers the one question the rest of mtpforge asks: which scheme, if
any, does the engine apply to this module?

Matching follows vLLM: compressed-tensors `ignore` entries are exact module
names or `re:` regexes applied with `re.match` (anchored at the start), and
targets may also be a module class name (`Linear`); modelopt
`exclude_modules` are `fnmatch` wildcards. A fused module (`qkv_proj`,
`gate_up_proj`) is checked by its fused name, which is exactly why per-module
MTP ignore entries fail (docs/domain.md F3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

CT_METHOD = "compressed-tensors"
MODELOPT_METHOD = "modelopt"
# Methods the engines know but whose storage mtpforge does not analyse.
FOREIGN_METHODS = frozenset({"gptq", "awq", "fp8", "auto-round", "bitsandbytes", "mxfp4", "quark", "gguf", "hqq"})
CT_FORMATS = frozenset({
    "pack-quantized", "nvfp4-pack-quantized", "float-quantized", "int-quantized",
    "naive-quantized", "mixed-precision", "dense", "marlin-24", "mxfp4-pack-quantized",
})
MODELOPT_ALGOS = {"NVFP4": 4, "FP8": 8, "W4A16_NVFP4": 4, "NVFP4_AWQ": 4}


class QuantConfigInvalid(ValueError):
    """A quantization config is malformed; the message says which field and why."""


@dataclass(frozen=True)
class QuantScheme:
    """One group of a quantization config: what its weights become, and which modules."""

    format: str  # e.g. "pack-quantized", "nvfp4-pack-quantized", "modelopt-nvfp4"
    weight_bits: int
    weight_type: str  # "int" or "float"
    strategy: str | None  # "group", "channel", "tensor_group", ...
    group_size: int | None
    symmetric: bool
    activations: str | None  # None when weight-only
    targets: tuple[str, ...]

    @property
    def label(self) -> str:
        """A short human name, e.g. `W4A16 int g32 asym` or `NVFP4 g16`."""
        if self.weight_type == "float" and self.weight_bits == 4:
            return "NVFP4" + ("" if self.activations else "A16") + f" g{self.group_size or 16}"
        acts = self.activations or "A16"
        size = f" g{self.group_size}" if self.group_size else f" {self.strategy or ''}".rstrip()
        sym = "" if self.symmetric else " asym"
        return f"W{self.weight_bits}{acts} {self.weight_type}{size}{sym}"


@dataclass(frozen=True)
class QuantConfig:
    """A parsed quantization config from one file."""

    method: str  # CT_METHOD or MODELOPT_METHOD
    source: str  # the file it came from
    schemes: tuple[QuantScheme, ...]
    ignore: tuple[str, ...]

    def ignores(self, module: str) -> bool:
        """True when the ignore / exclude list covers `module` by name."""
        if self.method == MODELOPT_METHOD:
            return any(fnmatchcase(module, p) for p in self.ignore)
        return any(_ct_match(entry, module) for entry in self.ignore)

    def scheme_for(self, module: str, *, is_linear: bool = True) -> QuantScheme | None:
        """The scheme the engine applies to `module`, or None when it stays unquantized."""
        if self.ignores(module):
            return None
        for scheme in self.schemes:
            for target in scheme.targets:
                if (target == "Linear" and is_linear) or _ct_match(target, module):
                    return scheme
        return None


def parse_ct(doc: Any, source: str) -> QuantConfig:
    """Parse a compressed-tensors `quantization_config` object."""
    _require(isinstance(doc, dict), source, "quantization_config must be an object")
    groups = doc.get("config_groups")
    _require(isinstance(groups, dict) and bool(groups), source, "config_groups must be a non-empty object")
    top_format = doc.get("format")
    schemes = []
    for name, group in groups.items():
        _require(isinstance(group, dict), source, f"config_groups.{name} must be an object")
        fmt = group.get("format") or top_format
        _require(fmt in CT_FORMATS, source, f"config_groups.{name}: unknown format {fmt!r}")
        schemes.append(_scheme(group, fmt, source, f"config_groups.{name}"))
    return QuantConfig(CT_METHOD, source, tuple(schemes), _ignore_list(doc.get("ignore"), source, "ignore"))


def parse_modelopt(doc: Any, source: str) -> QuantConfig:
    """Parse modelopt's `hf_quant_config.json` or its `quantization_config` form in config.json."""
    _require(isinstance(doc, dict), source, "must be a JSON object")
    quant = doc.get("quantization", doc)  # hf_quant_config nests it; config.json does not
    _require(isinstance(quant, dict), source, "'quantization' must be an object")
    algo = quant.get("quant_algo")
    _require(algo in MODELOPT_ALGOS, source, f"unknown quant_algo {algo!r} (known: {', '.join(MODELOPT_ALGOS)})")
    bits = MODELOPT_ALGOS[algo]
    group_size = quant.get("group_size", 16 if bits == 4 else None)
    _require(group_size is None or _is_pos_int(group_size), source, f"group_size must be a positive integer, got {group_size!r}")
    excludes = quant.get("exclude_modules", quant.get("ignore", []))
    scheme = QuantScheme(
        format="modelopt-nvfp4" if bits == 4 else "modelopt-fp8",
        weight_bits=bits, weight_type="float", strategy="tensor_group" if bits == 4 else "tensor",
        group_size=group_size, symmetric=True,
        activations=None if algo == "W4A16_NVFP4" else f"A{bits}", targets=("Linear",),
    )
    return QuantConfig(MODELOPT_METHOD, source, (scheme,), _ignore_list(excludes, source, "exclude_modules"))


def _scheme(group: dict[str, Any], fmt: str, source: str, where: str) -> QuantScheme:
    targets = _strings(group.get("targets"), source, f"{where}.targets must be a non-empty list of strings")
    weights = _object(group.get("weights"), source, f"{where}.weights must be an object")
    bits, wtype = _bits(weights.get("num_bits"), source, where), weights.get("type", "int")
    _require(wtype in ("int", "float"), source, f"{where}.weights.type {wtype!r} is neither int nor float")
    group_size = weights.get("group_size")
    _require(group_size is None or _is_pos_int(group_size), source,
             f"{where}.weights.group_size {group_size!r} must be a positive integer")
    strategy = weights.get("strategy")
    _require(strategy != "group" or bool(group_size), source, f"{where}: strategy 'group' needs a group_size")
    acts = group.get("input_activations")
    _require(acts is None or isinstance(acts, dict), source, f"{where}.input_activations must be an object or null")
    act_label = None
    if acts:
        act_label = f"A{acts.get('num_bits', '?')}"
    return QuantScheme(fmt, bits, wtype, strategy, group_size, bool(weights.get("symmetric", True)),
                       act_label, tuple(targets))


def _ignore_list(value: Any, source: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    _require(isinstance(value, list) and all(isinstance(v, str) for v in value), source, f"{field} must be a list of strings")
    for entry in value:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as e:
                raise QuantConfigInvalid(f"{source}: {field} entry {entry!r} is not a valid regex: {e}") from None
    return tuple(value)


def _ct_match(entry: str, module: str) -> bool:
    if entry.startswith("re:"):
        return re.match(entry[3:], module) is not None
    return entry == module


def _is_pos_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _require(ok: bool, source: str, reason: str) -> None:
    if not ok:
        raise QuantConfigInvalid(f"{source}: {reason}")


def _object(value: Any, source: str, reason: str) -> dict[str, Any]:
    """`value`, which must be a JSON object."""
    _require(isinstance(value, dict), source, reason)
    return value


def _bits(value: Any, source: str, where: str) -> int:
    """`value`, which must be a supported weight bit width."""
    _require(value in (2, 3, 4, 5, 6, 7, 8, 16), source, f"{where}.weights.num_bits {value!r} is not supported")
    return value


def _strings(value: Any, source: str, reason: str) -> list[str]:
    """`value`, which must be a non-empty list of strings."""
    _require(isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value), source, reason)
    return value

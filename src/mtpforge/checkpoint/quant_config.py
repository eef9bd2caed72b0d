"""Quantization configs as the engines read them, one `QuantConfig` per file.

Two sources may describe one checkpoint: `config.json`'s `quantization_config`
(MLX: `quantization`) and modelopt's `hf_quant_config.json`. Each is parsed
into a `QuantConfig` that answers the one question the rest of mtpforge asks:
which scheme, if any, does the engine apply to this module?

Parsed here: compressed-tensors and modelopt (NVFP4, FP8, W4A16_NVFP4 and
MIXED_PRECISION's per-layer `quantized_layers`). GPTQ, AWQ, AutoRound, Quark,
fp8 and MLX affine: `quant_readers`. Name rules (`ignore`, `exclude_modules`,
...) follow vLLM and are compiled once (`quant_match`): compressed-tensors
entries are exact names or `re:` regexes applied with `re.match`, modelopt's
are `fnmatch` wildcards. A fused module (`qkv_proj`, `gate_up_proj`) is
checked by its fused name, which is exactly why per-module MTP ignore entries
fail (docs/domain.md F3).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mtpforge.checkpoint.quant_match import NameRules, ct_rules, wildcard_rules

CT_METHOD = "compressed-tensors"
MODELOPT_METHOD = "modelopt"
GPTQ_METHOD, AWQ_METHOD, AUTOROUND_METHOD, QUARK_METHOD, FP8_METHOD, MLX_METHOD = (
    "gptq", "awq", "auto-round", "quark", "fp8", "mlx")
# Methods the engines know but whose storage mtpforge does not analyse.
FOREIGN_METHODS = frozenset({"bitsandbytes", "mxfp4", "gguf", "hqq", "fbgemm_fp8", "experts_int8", "torchao"})
CT_FORMATS = frozenset({
    "pack-quantized", "nvfp4-pack-quantized", "float-quantized", "int-quantized",
    "naive-quantized", "mixed-precision", "dense", "marlin-24", "mxfp4-pack-quantized",
})
# vLLM's ModelOpt linear algorithms (`modelopt.py::LINEAR_ALGOS`, and the block-FP8 alias), by weight bits.
MODELOPT_ALGOS = {"NVFP4": 4, "W4A16_NVFP4": 4, "NVFP4_AWQ": 4, "FP8": 8, "FP8_PER_CHANNEL_PER_TOKEN": 8, "FP8_PB_WO": 8,
                  "FP8_BLOCK_SCALES": 8, "MXFP8": 8}
MIXED_PRECISION = "MIXED_PRECISION"


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
        """A short human name, e.g. `W4A16 int g32 asym`, `NVFP4 g16`, `MXFP4 g32` or `GPTQ W4A16 int g128`."""
        if self.weight_type == "float" and self.weight_bits == 4:
            kind = "MXFP4" if self.format.startswith("mxfp4") else "NVFP4"
            return kind + ("" if self.activations else "A16") + f" g{self.group_size or (32 if kind == 'MXFP4' else 16)}"
        acts = self.activations or "A16"
        size = f" g{self.group_size}" if self.group_size else f" {self.strategy or ''}".rstrip()
        sym = "" if self.symmetric else " asym"
        packing = {"gptq": "GPTQ ", "awq": "AWQ ", "mlx-affine": "MLX "}.get(self.format, "")
        return f"{packing}W{self.weight_bits}{acts} {self.weight_type}{size}{sym}"


@dataclass(frozen=True)
class QuantConfig:
    """A parsed quantization config from one file.

    `skip` holds the "not quantized" rules (ignore, exclude_modules, ...); `targets` the schemes and the
    modules each applies to (`None`: every Linear). A format whose decision is more than that
    (GPTQ `dynamic`, MIXED_PRECISION, AutoRound `extra_config`, MLX overrides) brings its own `decide`.
    """

    method: str  # CT_METHOD, MODELOPT_METHOD, GPTQ_METHOD, ...
    source: str  # the file it came from
    schemes: tuple[QuantScheme, ...]
    ignore: tuple[str, ...]  # the "not quantized" entries as written, for display and for --fix
    skip: NameRules = field(default_factory=NameRules, compare=False, repr=False)
    targets: tuple[tuple[QuantScheme, NameRules | None], ...] = field(default=(), compare=False, repr=False)
    decide: Callable[[str], QuantScheme | None] | None = field(default=None, compare=False, repr=False)
    stored_decides: bool = False  # MLX: a module without an override is quantized exactly when its scales are stored
    overrides: tuple[str, ...] = ()  # MLX: the modules config.json gives their own bits (mlx-lm's 8-bit routers)

    @property
    def decision_key(self) -> tuple[object, ...] | None:
        """Equal for two configs that give every module the same scheme (ModelOpt repeats hf_quant_config.json
        in config.json): a 100K-module check then runs once. None when a format's own `decide` function rules."""
        if self.decide is not None:
            return None
        targets = tuple((scheme, None if rules is None else rules.key) for scheme, rules in self.targets)
        return (self.method, self.schemes, self.ignore, self.skip.key, targets, self.stored_decides, self.overrides)

    def ignores(self, module: str) -> bool:
        """True when the ignore / exclude list covers `module` by name."""
        return self.skip.matches(module)

    def scheme_for(self, module: str, *, is_linear: bool = True) -> QuantScheme | None:
        """The scheme the engine applies to `module`, or None when it stays unquantized."""
        if not is_linear:
            return self._scheme_for(module, False)
        memo = self._memo  # doctor asks about each of ~100K modules several times
        if module not in memo:
            memo[module] = self._scheme_for(module, True)
        return memo[module]

    def has_override(self, module: str) -> bool:
        """MLX: does config.json name `module` itself (as False or with its own bits)?"""
        return module in self.ignore or module in self.overrides

    @cached_property
    def _memo(self) -> dict[str, QuantScheme | None]:
        return {}

    def _scheme_for(self, module: str, is_linear: bool) -> QuantScheme | None:
        if self.decide is not None:
            return self.decide(module)
        if self.ignores(module):
            return None
        for scheme, rules in self.targets:
            if (rules is None and is_linear) or (rules is not None and rules.matches(module)):
                return scheme
        return None


def parse(doc: Any, source: str) -> QuantConfig:
    """Parse a `quantization_config` (or MLX `quantization`) object (`FOREIGN_METHODS` are refused: check first)."""
    from mtpforge.checkpoint import quant_readers

    method = method_of(doc)
    parser = {CT_METHOD: parse_ct, MODELOPT_METHOD: parse_modelopt, **quant_readers.PARSERS}.get(method or "")
    if parser is None:
        raise QuantConfigInvalid(f"{source}: unknown quant_method {method!r}")
    return parser(doc, source)


def method_of(doc: Any) -> str | None:
    """The quant_method of a config object, with the aliases writers use; MLX has none, only bits and group_size."""
    if not isinstance(doc, dict):
        return None
    method = doc.get("quant_method")
    if method is None and "bits" in doc and "group_size" in doc:
        return MLX_METHOD
    if not isinstance(method, str):
        return None
    return {"intel/auto-round": AUTOROUND_METHOD, "auto_round": AUTOROUND_METHOD, "inc": AUTOROUND_METHOD}.get(method, method)


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
    ignore = _ignore_list(doc.get("ignore"), source, "ignore")
    targets = tuple((scheme, None if "Linear" in scheme.targets else ct_rules(scheme.targets)) for scheme in schemes)
    return QuantConfig(CT_METHOD, source, tuple(schemes), ignore, skip=ct_rules(ignore), targets=targets)


def parse_modelopt(doc: Any, source: str) -> QuantConfig:
    """Parse modelopt's `hf_quant_config.json` or its `quantization_config` form in config.json."""
    _require(isinstance(doc, dict), source, "must be a JSON object")
    quant = doc.get("quantization", doc)  # hf_quant_config nests it; config.json does not
    _require(isinstance(quant, dict), source, "'quantization' must be an object")
    algo = quant.get("quant_algo")
    excludes = _ignore_list(quant.get("exclude_modules", quant.get("ignore", [])), source, "exclude_modules")
    skip = wildcard_rules(excludes)
    if algo == MIXED_PRECISION:
        return _modelopt_mixed(quant, source, excludes, skip)
    scheme = _modelopt_scheme(algo, quant.get("group_size"), source, "quant_algo")
    return QuantConfig(MODELOPT_METHOD, source, (scheme,), excludes, skip=skip, targets=((scheme, None),))


def _modelopt_scheme(algo: Any, group_size: Any, source: str, where: str) -> QuantScheme:
    algo = algo.upper() if isinstance(algo, str) else algo  # ModelOpt may write fp8_pb_wo
    _require(isinstance(algo, str) and algo in MODELOPT_ALGOS, source, f"{where}: unknown quant_algo {algo!r} "
             f"(known: {', '.join([*MODELOPT_ALGOS, MIXED_PRECISION])})")
    bits = MODELOPT_ALGOS[algo]
    group_size = group_size if group_size is not None else (16 if bits == 4 else None)
    _require(group_size is None or _is_pos_int(group_size), source, f"{where}: group_size must be a positive integer, "
             f"got {group_size!r}")
    return QuantScheme(
        format="modelopt-nvfp4" if bits == 4 else "modelopt-fp8",
        weight_bits=bits, weight_type="float", strategy="tensor_group" if bits == 4 else "tensor",
        group_size=group_size, symmetric=True,
        activations=None if algo == "W4A16_NVFP4" else f"A{bits}", targets=("Linear",),
    )


def _modelopt_mixed(quant: dict[str, Any], source: str, excludes: tuple[str, ...], skip: NameRules) -> QuantConfig:
    """MIXED_PRECISION: each module's algorithm is its own entry of `quantized_layers` (vLLM
    `ModelOptMixedPrecisionConfig`); a module listed nowhere stays unquantized."""
    layers = _object(quant.get("quantized_layers"), source, "MIXED_PRECISION needs a non-empty quantized_layers object")
    _require(bool(layers), source, "MIXED_PRECISION needs a non-empty quantized_layers object")
    per_layer: dict[str, QuantScheme] = {}
    kinds: dict[tuple[Any, Any], QuantScheme] = {}
    for name, entry in layers.items():
        _require(isinstance(entry, dict), source, f"quantized_layers.{name} must be an object")
        key = (entry.get("quant_algo"), entry.get("group_size"))
        if key not in kinds:
            kinds[key] = _modelopt_scheme(key[0], key[1], source, f"quantized_layers.{name}")
        per_layer[name] = kinds[key]
    parents = _parents_of(per_layer)

    def decide(module: str) -> QuantScheme | None:
        if skip.matches(module):
            return None
        names = _spellings(module)
        for name in names:
            if name in per_layer:
                return per_layer[name]
            if name in parents:  # the parent of listed modules: fused experts listed one by one
                return parents[name]
        for name in names:  # a module under a listed one: one expert of a listed `mlp.experts`
            parts = name.split(".")
            for i in range(len(parts) - 1, 0, -1):
                if ".".join(parts[:i]) in per_layer:
                    return per_layer[".".join(parts[:i])]
        return None

    return QuantConfig(MODELOPT_METHOD, source, tuple(kinds.values()), excludes, skip=skip, decide=decide)


def _parents_of(per_layer: dict[str, QuantScheme]) -> dict[str, QuantScheme]:
    """Every dotted ancestor of a listed module -> the scheme of its first listed child."""
    parents: dict[str, QuantScheme] = {}
    for name, scheme in per_layer.items():
        parts = name.split(".")
        for i in range(1, len(parts)):
            parents.setdefault(".".join(parts[:i]), scheme)
    return parents


def _spellings(module: str) -> list[str]:
    """`module` in both `model.language_model.` and `language_model.model.` spellings, as vLLM tries them."""
    for a, b in (("model.language_model.", "language_model.model."), ("language_model.model.", "model.language_model.")):
        if module.startswith(a):
            return [module, b + module[len(a):]]
    return [module]


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

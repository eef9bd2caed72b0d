"""The quantization configs of GPTQ, AWQ, AutoRound, AMD Quark, fp8 and MLX affine, read as vLLM
(MLX: mlx-lm) decides which modules each scheme applies to.

- GPTQ (`quant_method: gptq`; GPTQModel, AutoGPTQ): every Linear of the decoder is quantized with `bits`,
  `group_size`, `sym`, except where `dynamic` says otherwise: its keys are `re.match` patterns tried in order,
  `-:pattern` leaves the module unquantized, `+:pattern` (or a bare pattern) overrides bits / group_size;
  `modules_in_block_to_quantize`, when set, lists (as substrings) the only modules quantized. The LM head is
  quantized only with `lm_head: true`. (`utils/gptq_utils.py`.)
- AWQ (`quant_method: awq`): every Linear except those whose name contains an entry of
  `modules_to_not_convert` (`awq.py::is_layer_skipped_awq`).
- AutoRound (`quant_method: auto-round`, vLLM `inc`): `extra_config` per-layer entries (exact name, name
  suffix, then regex searched) override; else a module is quantized when it starts with an entry of
  `block_name_to_quantize` (all, when unset) and is not the LM head. `bits >= 16` means unquantized.
  Stored as GPTQ or AWQ tensors by `packing_format` (`auto_round:auto_gptq` by default).
- Quark (`quant_method: quark`): `exclude` (exact or `re:`), then `layer_quant_config` (a pattern without
  `*` matches a module name it contains, else `fnmatch`), then `global_quant_config`. A weight `dtype: fp4`
  is MXFP4 (with `scale_format: e8m0`), `fp8_e4m3` is FP8.
- fp8 (`quant_method: fp8`, DeepSeek-V3/R1 block FP8): every Linear except `ignored_layers` /
  `modules_to_not_convert`, matched exactly (vLLM `Fp8Config`: match mode "exact", no regex).
- MLX affine (`quantization: {group_size, bits}` with no `quant_method`, mlx-lm): a module is quantized when
  its `scales` are stored, unless config.json names it (`"path": false`, or its own `{bits, group_size}`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from mtpforge.checkpoint.quant_config import (
    AUTOROUND_METHOD,
    AWQ_METHOD,
    FP8_METHOD,
    GPTQ_METHOD,
    MLX_METHOD,
    QUARK_METHOD,
    QuantConfig,
    QuantConfigInvalid,
    QuantScheme,
)
from mtpforge.checkpoint.quant_match import NameRules, OrderedRules, ct_rules, substring_rules

_INT_BITS = (2, 3, 4, 8)


def parse_gptq(doc: dict[str, Any], source: str) -> QuantConfig:
    bits, group = _int_bits(doc.get("bits"), source, "bits"), _group(doc.get("group_size"), source)
    sym = bool(doc.get("sym", True))
    dynamic = doc.get("dynamic") or {}
    _require(isinstance(dynamic, dict), source, "dynamic must be an object of pattern -> overrides")
    for pattern in dynamic:
        _regex(pattern[2:] if pattern[:2] in ("-:", "+:") else pattern, source, f"dynamic key {pattern!r}")
    rules = OrderedRules(dynamic)
    only = _flatten(doc.get("modules_in_block_to_quantize") or [])
    base = _int_scheme("gptq", bits, group, sym)
    lm_head = bool(doc.get("lm_head", False))

    def decide(module: str) -> QuantScheme | None:
        if _is_lm_head(module) and not lm_head:
            return None
        rule = rules.decide(module)
        if rule is not None and rule[0]:
            return None
        if only and not any(entry in module for entry in only):
            return None
        if rule is not None and isinstance(rule[1], dict):
            o = rule[1]
            return _int_scheme("gptq", o.get("bits", bits), _group(o.get("group_size", group), source), o.get("sym", sym))
        return base

    negatives = tuple(k for k in dynamic if k.startswith("-:"))
    return QuantConfig(GPTQ_METHOD, source, (base,), negatives, skip=_negatives(negatives), decide=decide)


def parse_awq(doc: dict[str, Any], source: str) -> QuantConfig:
    bits = _int_bits(doc.get("bits", doc.get("w_bit")), source, "bits")
    group = _group(doc.get("group_size", doc.get("q_group_size")), source)
    skip_list = doc.get("modules_to_not_convert") or []
    _require(isinstance(skip_list, list) and all(isinstance(e, str) for e in skip_list), source,
             "modules_to_not_convert must be a list of strings")
    skip = substring_rules(skip_list)
    scheme = _int_scheme("awq", bits, group, not doc.get("zero_point", True))

    def decide(module: str) -> QuantScheme | None:
        return None if _is_lm_head(module) or skip.matches(module) else scheme

    return QuantConfig(AWQ_METHOD, source, (scheme,), tuple(skip_list), skip=skip, decide=decide)


def parse_autoround(doc: dict[str, Any], source: str) -> QuantConfig:
    bits = _int_bits(doc.get("bits", 4), source, "bits", allowed=(2, 3, 4, 8))
    group, sym = doc.get("group_size", 128), bool(doc.get("sym", True))
    packing = str(doc.get("packing_format") or "auto_round:auto_gptq")
    data_type = str(doc.get("data_type") or "int")
    blocks = doc.get("block_name_to_quantize") or []
    blocks = blocks.split(",") if isinstance(blocks, str) else blocks
    _require(isinstance(blocks, list) and all(isinstance(b, str) for b in blocks), source,
             "block_name_to_quantize must be a string or a list of strings")
    extra = doc.get("extra_config") or {}
    _require(isinstance(extra, dict) and all(isinstance(v, dict) for v in extra.values()), source,
             "extra_config must be an object of module -> settings")
    patterns = [(re.compile(_regex(k, source, f"extra_config key {k!r}")), v) for k, v in extra.items()
                if any(c in k for c in r"*+?^$()[]{}|\\")]

    def scheme(cfg: dict[str, Any], quantized: bool) -> QuantScheme | None:
        b = cfg.get("bits", bits if quantized else 16)
        if not isinstance(b, int) or b >= 16:
            return None
        return _autoround_scheme(b, cfg.get("group_size", group), cfg.get("sym", sym), cfg.get("data_type", data_type), packing)

    def decide(module: str) -> QuantScheme | None:
        if module in extra:
            return scheme(extra[module], True)
        for key, cfg in extra.items():
            if module.endswith(f".{key}"):
                return scheme(cfg, True)
        quantized = not _is_lm_head(module) and (not blocks or any(module.startswith(b) for b in blocks))
        for regex, cfg in patterns:
            if regex.search(module):
                return scheme(cfg, quantized)
        return scheme({}, quantized)

    default = _autoround_scheme(bits, group, sym, data_type, packing)
    skipped = tuple(k for k, v in extra.items() if v.get("bits", bits) >= 16)
    blocks_note = tuple(f"block_name_to_quantize: {b}" for b in blocks)
    return QuantConfig(AUTOROUND_METHOD, source, (default,), skipped + blocks_note, skip=ct_rules(skipped), decide=decide)


def parse_quark(doc: dict[str, Any], source: str) -> QuantConfig:
    exclude = doc.get("exclude") or []
    _require(isinstance(exclude, list) and all(isinstance(e, str) for e in exclude), source, "exclude must be a list of strings")
    for entry in exclude:
        if entry.startswith("re:"):
            _regex(entry[3:], source, f"exclude entry {entry!r}")
    skip = ct_rules(exclude)
    global_cfg = doc.get("global_quant_config") or {}
    per_layer = doc.get("layer_quant_config") or {}
    _require(isinstance(global_cfg, dict) and isinstance(per_layer, dict)
             and all(isinstance(c, dict) for c in per_layer.values()), source,
             "global_quant_config and layer_quant_config (and each of its entries) must be objects")
    default = _quark_scheme(global_cfg, source, "global_quant_config")
    layer_schemes = {p: _quark_scheme(c, source, f"layer_quant_config.{p}") for p, c in per_layer.items()}

    def decide(module: str) -> QuantScheme | None:
        if skip.matches(module):
            return None
        for pattern, s in layer_schemes.items():
            if (module in pattern) if "*" not in pattern else fnmatch.fnmatch(module, pattern):
                return s
        return default

    schemes = tuple(s for s in (default, *layer_schemes.values()) if s is not None)
    return QuantConfig(QUARK_METHOD, source, schemes, tuple(exclude), skip=skip, decide=decide)


def parse_fp8(doc: dict[str, Any], source: str) -> QuantConfig:
    ignored = doc.get("ignored_layers") or doc.get("modules_to_not_convert") or []
    _require(isinstance(ignored, list) and all(isinstance(e, str) for e in ignored), source,
             "ignored_layers must be a list of strings")
    block = doc.get("weight_block_size")
    scheme = QuantScheme("fp8", 8, "float", "block" if block else "channel", None, True,
                         "A8" if doc.get("activation_scheme") else None, ("Linear",))
    skip = NameRules(exact=ignored)

    def decide(module: str) -> QuantScheme | None:
        return None if _is_lm_head(module) or skip.matches(module) else scheme

    return QuantConfig(FP8_METHOD, source, (scheme,), tuple(ignored), skip=skip, decide=decide)


def parse_mlx(doc: dict[str, Any], source: str) -> QuantConfig:
    bits, group = _int_bits(doc.get("bits"), source, "bits", allowed=(2, 3, 4, 5, 6, 8)), _group(doc.get("group_size"), source)
    mode = doc.get("mode", "affine")
    _require(mode == "affine", source, f"MLX quantization mode {mode!r} is not read (only affine)")
    base = _int_scheme("mlx-affine", bits, group, False)
    overrides: dict[str, QuantScheme | None] = {}
    for name, value in doc.items():
        if name in ("bits", "group_size", "mode", "quant_method"):
            continue
        _require(value is False or isinstance(value, dict), source, f"quantization.{name} must be false or an object")
        overrides[name] = None if value is False else _int_scheme(
            "mlx-affine", _int_bits(value.get("bits", bits), source, f"{name}.bits", allowed=(2, 3, 4, 5, 6, 8)),
            _group(value.get("group_size", group), source), False)

    def decide(module: str) -> QuantScheme | None:
        return overrides.get(module, base)

    skipped = tuple(n for n, s in overrides.items() if s is None)
    # `ignore` lists only what stays unquantized: a module with its own bits is an override, not an exclusion
    return QuantConfig(MLX_METHOD, source, (base,), skipped, skip=ct_rules(skipped), decide=decide,
                       stored_decides=True, overrides=tuple(n for n, s in overrides.items() if s is not None))


PARSERS: dict[str, Callable[[dict[str, Any], str], QuantConfig]] = {
    GPTQ_METHOD: parse_gptq, AWQ_METHOD: parse_awq, AUTOROUND_METHOD: parse_autoround, QUARK_METHOD: parse_quark,
    FP8_METHOD: parse_fp8, MLX_METHOD: parse_mlx,
}


def _autoround_scheme(bits: int, group: Any, sym: bool, data_type: str, packing: str) -> QuantScheme:
    if "mx_fp" in data_type:
        return QuantScheme("mxfp4" if bits == 4 else "mxfp8", bits, "float", "group", 32, True, None, ("Linear",))
    if data_type.startswith("fp") and bits == 8:
        return QuantScheme("fp8", 8, "float", "channel", None, True, None, ("Linear",))
    return _int_scheme("awq" if "awq" in packing else "gptq", bits, group if isinstance(group, int) and group > 0 else None, sym)


def _quark_scheme(cfg: dict[str, Any], source: str, where: str) -> QuantScheme | None:
    weight = cfg.get("weight")
    if weight is None:
        return None
    if isinstance(weight, list):  # two-stage quantizers: the first stage is what is stored
        weight = weight[0] if weight else None
    if not isinstance(weight, dict):
        raise QuantConfigInvalid(f"{source}: {where}.weight must be an object")
    acts = cfg.get("input_tensors")
    label = f"A-{acts['dtype']}" if isinstance(acts, dict) and acts.get("dtype") else None
    wdtype = str(weight.get("dtype", ""))
    if wdtype == "fp4":
        return QuantScheme("mxfp4", 4, "float", "group", weight.get("group_size", 32), True, label, ("Linear",))
    if wdtype.startswith("fp8"):
        return QuantScheme("fp8", 8, "float", str(weight.get("qscheme", "per_tensor")), None, True, label, ("Linear",))
    bits = 4 if "int4" in wdtype else 8 if "int8" in wdtype else 0
    _require(bool(bits), source, f"{where}.weight.dtype {wdtype!r} is not a Quark dtype mtpforge reads")
    return QuantScheme(f"quark-{wdtype}", bits, "int", "group", weight.get("group_size"), wdtype != "uint4", label, ("Linear",))


def _int_scheme(fmt: str, bits: int, group: int | None, sym: bool) -> QuantScheme:
    return QuantScheme(fmt, bits, "int", "group" if group else "channel", group, sym, None, ("Linear",))


def _negatives(keys: tuple[str, ...]) -> NameRules:
    return NameRules(regexes=[k[2:] for k in keys])


def _is_lm_head(module: str) -> bool:
    return module == "lm_head" or module.endswith(".lm_head")


def _flatten(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [s for v in value for s in _flatten(v)] if isinstance(value, list) else []


def _int_bits(value: Any, source: str, where: str, *, allowed: tuple[int, ...] = _INT_BITS) -> int:
    _require(value in allowed and not isinstance(value, bool), source, f"{where} {value!r} is not one of {list(allowed)}")
    return int(value)


def _group(value: Any, source: str) -> int | None:
    """A group size; -1 (and None) mean one group per output channel."""
    if value is None or value == -1:
        return None
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, source,
             f"group_size {value!r} must be a positive integer or -1")
    return int(value)


def _regex(pattern: str, source: str, where: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise QuantConfigInvalid(f"{source}: {where} is not a valid regex: {e}") from None
    return pattern


def _require(ok: bool, source: str, reason: str) -> None:
    if not ok:
        raise QuantConfigInvalid(f"{source}: {reason}")

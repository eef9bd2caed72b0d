"""Edit the lists that keep modules out of quantization, in every file that has one.

compressed-tensors keeps them in `quantization_config.ignore` (exact names or
`re:` regexes); modelopt in `hf_quant_config.json` `quantization.exclude_modules`
and in config.json's `quantization_config.ignore` (fnmatch wildcards); Quark in
`exclude` (as compressed-tensors); AWQ in `modules_to_not_convert` (substrings);
GPTQ in the `-:` keys of `dynamic` (`re.match`, first match wins, so the head's
rule goes first); AutoRound in `extra_config` (a regex key with `bits: 16`).
The MTP head is excluded as the engines read it: one pattern (`re:^mtp.*`,
`mtp*`, `-:^mtp\\.`), which also matches the fused `qkv_proj` / `gate_up_proj`
names that per-module entries miss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from mtpforge.checkpoint.quant_config import (
    AUTOROUND_METHOD,
    AWQ_METHOD,
    CT_METHOD,
    GPTQ_METHOD,
    MODELOPT_METHOD,
    QUARK_METHOD,
    method_of,
)

Edit = Callable[[list[str], str], list[str]]
# The list each method keeps its "not quantized" entries in (GPTQ / AutoRound: the keys of an object).
LIST_KEY = {CT_METHOD: "ignore", QUARK_METHOD: "exclude", AWQ_METHOD: "modules_to_not_convert"}
DICT_KEY = {GPTQ_METHOD: "dynamic", AUTOROUND_METHOD: "extra_config"}
_DICT_VALUE = {GPTQ_METHOD: {}, AUTOROUND_METHOD: {"bits": 16}}


def edit_lists(config: dict[str, Any], hf_quant: dict[str, Any] | None,
               edit: Edit) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """Apply `edit(entries, method)` to every ignore / exclude list; return new copies and whether anything changed."""
    config, hf_quant = copy.deepcopy(config), copy.deepcopy(hf_quant)
    changed = False
    qc = config.get("quantization_config")
    method = method_of(qc)
    if isinstance(qc, dict) and method == MODELOPT_METHOD:
        for key in ("ignore", "exclude_modules"):
            if key in qc:
                before = list(qc.get(key) or [])
                qc[key] = edit(before, MODELOPT_METHOD)
                changed |= qc[key] != before
    elif isinstance(qc, dict) and method in LIST_KEY:
        key = LIST_KEY[method]
        before = list(qc.get(key) or [])
        qc[key] = edit(before, method)
        changed |= qc[key] != before
    elif isinstance(qc, dict) and method in DICT_KEY:
        key = DICT_KEY[method]
        old = dict(qc.get(key) or {})
        keys = edit(list(old), method)
        qc[key] = {k: old.get(k, copy.deepcopy(_DICT_VALUE[method])) for k in keys}
        changed |= list(qc[key]) != list(old)
    if isinstance(hf_quant, dict) and isinstance(hf_quant.get("quantization"), dict):
        quant = hf_quant["quantization"]
        before = list(quant.get("exclude_modules") or [])
        quant["exclude_modules"] = edit(before, MODELOPT_METHOD)
        changed |= quant["exclude_modules"] != before
    return config, hf_quant, changed


def exclude_prefix(prefix: str) -> Edit:
    """An edit that excludes every module under `prefix` with one pattern, dropping per-module entries for it."""

    def edit(entries: list[str], method: str) -> list[str]:
        pattern = head_pattern(method, prefix)
        kept = [e for e in entries if not _names_under(e, prefix) and e != pattern]
        return [pattern, *kept] if method == GPTQ_METHOD else [*kept, pattern]  # GPTQ: the first matching rule decides

    return edit


def head_pattern(method: str, prefix: str) -> str:
    """The one entry that keeps every module under `prefix` (fused names included) out of `method`'s scheme."""
    return {
        CT_METHOD: f"re:^{prefix}.*", QUARK_METHOD: f"re:^{prefix}.*", MODELOPT_METHOD: f"{prefix}*",
        AWQ_METHOD: f"{prefix}.", GPTQ_METHOD: f"-:^{prefix}\\.", AUTOROUND_METHOD: f"^{prefix}\\.",
    }.get(method, f"{prefix}*")


def head_exclusion(config: dict[str, Any], prefix: str) -> str:
    """The entry `exclude_prefix(prefix)` writes into `config`'s quantization config, and where, for a plan's text."""
    method = method_of(config.get("quantization_config")) or MODELOPT_METHOD
    where = LIST_KEY.get(method) or DICT_KEY.get(method) or "exclude_modules"
    return f"'{head_pattern(method, prefix)}' in {where}"


def drop_names(under: str) -> Edit:
    """An edit that removes exact names (not patterns) of modules under `under` (e.g. `model.visual`)."""

    def edit(entries: list[str], method: str) -> list[str]:
        return [e for e in entries if not _names_under(e, under)]

    return edit


def _names_under(entry: str, prefix: str) -> bool:
    """An exact module name (or a wildcard that is not a bare prefix match) under `prefix`."""
    if entry.startswith(("re:", "-:", "+:", "^")):
        return False
    return entry == prefix or entry.startswith(prefix + ".")

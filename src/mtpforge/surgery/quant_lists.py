"""Edit the lists that keep modules out of quantization, in every file that has one.

compressed-tensors keeps them in `quantization_config.ignore` (exact names or
`re:` regexes); modelopt in `hf_quant_config.json` `quantization.exclude_modules`
and in config.json's `quantization_config.ignore` (fnmatch wildcards). The MTP
head is excluded as the engines read it: `re:^mtp.*` / `mtp*`, which also
match the fused `qkv_proj` / `gate_up_proj` names that per-module entries miss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from mtpforge.checkpoint.quant_config import CT_METHOD, MODELOPT_METHOD

Edit = Callable[[list[str], str], list[str]]


def edit_lists(config: dict[str, Any], hf_quant: dict[str, Any] | None,
               edit: Edit) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """Apply `edit(entries, method)` to every ignore / exclude list; return new copies and whether anything changed."""
    config, hf_quant = copy.deepcopy(config), copy.deepcopy(hf_quant)
    changed = False
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") in (CT_METHOD, MODELOPT_METHOD):
        for key in ("ignore", "exclude_modules"):
            if key in qc or (key == "ignore" and qc.get("quant_method") == CT_METHOD):
                before = list(qc.get(key) or [])
                qc[key] = edit(before, qc["quant_method"])
                changed |= qc[key] != before
    if isinstance(hf_quant, dict) and isinstance(hf_quant.get("quantization"), dict):
        quant = hf_quant["quantization"]
        before = list(quant.get("exclude_modules") or [])
        quant["exclude_modules"] = edit(before, MODELOPT_METHOD)
        changed |= quant["exclude_modules"] != before
    return config, hf_quant, changed


def exclude_prefix(prefix: str) -> Edit:
    """An edit that excludes every module under `prefix` with one pattern, dropping per-module entries for it."""

    def edit(entries: list[str], method: str) -> list[str]:
        pattern = f"re:^{prefix}.*" if method == CT_METHOD else f"{prefix}*"
        kept = [e for e in entries if not _names_under(e, prefix) and e != pattern]
        return [*kept, pattern]

    return edit


def drop_names(under: str) -> Edit:
    """An edit that removes exact names (not patterns) of modules under `under` (e.g. `model.visual`)."""

    def edit(entries: list[str], method: str) -> list[str]:
        return [e for e in entries if not _names_under(e, under)]

    return edit


def _names_under(entry: str, prefix: str) -> bool:
    """An exact module name (or a wildcard that is not a bare prefix match) under `prefix`."""
    if entry.startswith("re:"):
        return False
    return entry == prefix or entry.startswith(prefix + ".")

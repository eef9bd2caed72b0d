"""Family rules: everything mtpforge knows about an architecture lives here.

`detect_family(config)` picks the rules by `model_type`; `expected_inventory`
builds the tensor inventory a checkpoint must have, choosing the MoE expert
layout (fused 3-D tensors or one tensor per expert) from what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mtpforge.errors import UnsupportedFamilyError
from mtpforge.families.base import EMBEDDINGS, GROUPS, MTP, TRUNK, VISION, Family, Inventory, TensorSpec
from mtpforge.families.limits import check_config
from mtpforge.families.qwen3_5 import QWEN3_5, QWEN3_5_MOE
from mtpforge.families.qwen3_next import QWEN3_NEXT

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_5, QWEN3_5_MOE, QWEN3_NEXT)}

__all__ = ["EMBEDDINGS", "FAMILIES", "GROUPS", "MTP", "TRUNK", "VISION", "Family", "Inventory", "TensorSpec",
           "detect_family", "expected_inventory"]


def detect_family(config: dict[str, Any]) -> Family:
    """The family whose rules apply to `config`.

    Raises:
        UnsupportedFamilyError: no family claims the config's `model_type`.
        CheckpointError: a count or dimension of the config is mistyped or out of bounds (families/limits.py).
    """
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if isinstance(model_type, str) and model_type in family.model_types:
            check_config(family, config)  # every count and dimension bounded before anything iterates over it
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UnsupportedFamilyError(
        f"config.json: model_type {model_type!r} is not a family mtpforge knows (known: {known})",
        hint="mtpforge handles Qwen3.5 / Qwen3.6 / Qwen3-Next hybrids with MTP heads",
    )


def expected_inventory(family: Family, config: dict[str, Any], stored_names: Iterable[str]) -> Inventory:
    """The inventory `config` implies, with the expert layout the stored names use."""
    fused = not any(".experts." in n and n.split(".experts.")[1][:1].isdigit() for n in stored_names)
    return family.expected(config, fused_experts=fused)

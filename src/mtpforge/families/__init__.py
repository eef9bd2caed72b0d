"""Family rules: everything mtpforge knows about an architecture lives here.

`detect_family(config)` picks the rules by `model_type` (docs/families.md lists
each family, its MTP layout and its sources); `expected_inventory` builds the
tensor inventory a checkpoint must have, reading the layout from what is
stored: the MoE expert layout (fused 3-D tensors or one tensor per expert) of
the trunk and of the MTP head apart (an export may fuse the head's experts
only), the language model's module path, and whether the tied copies an
engine can take from the trunk are shipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mtpforge.errors import UnsupportedFamilyError
from mtpforge.families.base import EMBEDDINGS, GROUPS, MTP, TRUNK, VISION, Family, Inventory, TensorSpec
from mtpforge.families.deepseek import DEEPSEEK_V3, DEEPSEEK_V32
from mtpforge.families.glm import GLM4_MOE, GLM_MOE_DSA
from mtpforge.families.limits import check_config
from mtpforge.families.mimo import MIMO
from mtpforge.families.mlx_names import is_mlx_layout, mla_dims, mlx_inventory
from mtpforge.families.qwen3_5 import QWEN3_5, QWEN3_5_MOE
from mtpforge.families.qwen3_next import QWEN3_NEXT

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_5, QWEN3_5_MOE, QWEN3_NEXT, DEEPSEEK_V3, DEEPSEEK_V32, GLM4_MOE,
                                                   GLM_MOE_DSA, MIMO)}

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
            return family.bind(config)
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    archs = config.get("architectures")
    arch = f" (architecture {archs[0]})" if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    raise UnsupportedFamilyError(
        f"config.json: model_type {model_type!r} is not a family mtpforge knows (known: {known}){arch}",
        hint="mtpforge has rules for Qwen3.5 / Qwen3.6 / Qwen3-Next, DeepSeek-V3 / R1 / V3.1 / V3.2, GLM-4.5 / 4.6 / 4.7, "
             "GLM-5 and MiMo (docs/families.md); no shard was read",
    )


def expected_inventory(family: Family, config: dict[str, Any], stored_names: Iterable[str]) -> Inventory:
    """The inventory `config` implies, in the layout the stored names use.

    The trunk's and the MTP head's expert layouts are read apart: an export may fuse the head's
    experts (`experts.gate_up_proj` [E, 2I, H]) beside a per-expert trunk, and calling either
    "incomplete" would hide the real findings. Tied copies (`optional`) are expected only where stored.
    """
    names = list(stored_names)
    stored = set(names)
    if is_mlx_layout(names, family.mlx_wrapper):  # an mlx-lm export: its own names, stacked experts, no vision
        prefix = family.trunk_prefix(config)
        inv = mlx_inventory(family.expected(config, fused_experts=False, vision=False, prefix=prefix), prefix,
                            family.mlx_wrapper, mla_dims(family, config))
        return Inventory({n: s for n, s in inv.items() if not s.optional or n in stored})
    experts = {True: [], False: []}  # type: dict[bool, list[bool]]  # in the MTP head? -> per-expert?
    for n in names:
        at = n.find(".experts.")
        if at >= 0:
            experts[family.is_mtp(n)].append(n[at + 9:at + 10].isdigit())
    trunk_fused = not any(experts[False])
    head_fused = not any(experts[True]) if experts[True] else trunk_fused
    prefixes = [p for p in family.trunk_prefixes(config) if any(n.startswith(p + ".layers.") for n in names)]
    inv = family.expected(config, fused_experts=trunk_fused, mtp_fused_experts=head_fused,
                          prefix=max(prefixes, key=len) if prefixes else None)
    return Inventory({n: s for n, s in inv.items() if not s.optional or n in stored})

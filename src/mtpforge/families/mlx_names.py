"""The names and shapes mlx-lm gives a family's tensors when it converts a checkpoint (`mlx_lm.convert`).

mlx-lm loads the Hugging Face checkpoint into its own module tree, runs the model's `sanitize`, and saves
that tree's parameters. What changes (ml-explore/mlx-lm, mlx_lm/models/qwen3_5.py, qwen3_5_moe.py,
qwen3_next.py, utils.py):

- Module paths: the Qwen3.5 `Model` holds the text model as `language_model` (`language_model.model.*`,
  `language_model.lm_head`); `Model.sanitize` maps `model.language_model` to `language_model.model` and
  prefixes every other key with `language_model.`. Qwen3-Next keeps `model.*` and `lm_head`.
- The vision tower is dropped (`model.visual` / `vision_tower` keys are skipped in `sanitize`).
- The MTP head is dropped: `TextModel.sanitize` keeps no key containing `mtp.` (a healthy mlx-lm export
  of a model whose config declares MTP layers has none: doctor reports the head as missing).
- MoE experts are stacked: `mlp.switch_mlp.{gate,up,down}_proj.weight` [E, out, in] (a `SwitchGLU`), built
  from per-expert tensors or split from a fused `experts.gate_up_proj` (`_normalize_experts`).
- Conv1d weights are moved to MLX's [out, kernel, in/groups] (`v.moveaxis(2, 1)`).
- Quantization (`nn.quantize` through `utils.quantize_model`): every module with `to_quantized` whose input
  width divides by the group size, Embedding included; the Qwen3.5 / Qwen3-Next `quant_predicate` gives
  the routers (`mlp.gate`, `shared_expert_gate`) `{"group_size": 64, "bits": 8}`, recorded per module in
  config.json's `quantization`. So in MLX a quantized router or GDN `in_proj_a` / `in_proj_b` is the
  converter's default, not a defect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from mtpforge.families.base import CONV, EXPERTS, Inventory, TensorSpec

SWITCH = ".switch_mlp."
_ROUTERS = (".mlp.gate", ".shared_expert_gate")  # the modules mlx-lm's quant_predicate gives 8 bits


def is_mlx_layout(names: Iterable[str], wrapper: str) -> bool:
    """True when the stored names are mlx-lm's: stacked `switch_mlp` experts, or the family's MLX wrapper path."""
    return any(SWITCH in n or (wrapper and n.startswith(wrapper + "model.")) for n in names)


def mlx_inventory(inv: Inventory, trunk_prefix: str, wrapper: str) -> Inventory:
    """`inv` (built per-expert, without the vision tower) under mlx-lm's names and shapes.

    Args:
        trunk_prefix: the language model's module path in `inv` (`model.language_model` or `model`).
        wrapper: the path mlx-lm's `Model` puts the text model under (`language_model.` for Qwen3.5, else "").
    """
    out = Inventory()
    stacked: dict[str, list[TensorSpec]] = {}
    for name, spec in inv.items():
        at = name.find(".experts.")
        if spec.expert and at >= 0 and name[at + 9:at + 10].isdigit():
            proj = name.rsplit(".", 2)[-2]  # gate_proj / up_proj / down_proj
            stacked.setdefault(f"{name[:at]}{SWITCH}{proj}.weight", []).append(spec)
            continue
        new = _rename(name, trunk_prefix, wrapper)
        shape = spec.shape
        if spec.kind == CONV and len(shape) == 3:
            shape = (shape[0], shape[2], shape[1])  # torch [out, in/groups, kernel] -> MLX [out, kernel, in/groups]
        mlx_default = spec.small_proj or spec.module.endswith(_ROUTERS)  # quantized by mlx-lm by default
        out[new] = replace(spec, name=new, module=_rename(spec.module, trunk_prefix, wrapper), shape=shape,
                           keep_high_precision=spec.keep_high_precision and not mlx_default,
                           small_proj=False)
    for name, specs in stacked.items():
        first = specs[0]
        new = _rename(name, trunk_prefix, wrapper)
        module = new.rsplit(".", 1)[0]
        out[new] = replace(first, name=new, module=module, shape=(len(specs), *first.shape), kind=EXPERTS,
                           fused=module.rsplit(".", 1)[0])
    return out


def _rename(name: str, trunk_prefix: str, wrapper: str) -> str:
    if name.startswith(trunk_prefix + "."):
        return f"{wrapper}model.{name[len(trunk_prefix) + 1:]}"
    return wrapper + name


def mlx_quantized(config: dict[str, Any]) -> bool:
    """True for a config mlx-lm quantized: `quantization` {group_size, bits, ...} and no `quant_method`."""
    quant = config.get("quantization")
    return isinstance(quant, dict) and "bits" in quant and "quant_method" not in quant

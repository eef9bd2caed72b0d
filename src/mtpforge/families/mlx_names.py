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
- DeepSeek-V3 / R1 (`mlx_lm/models/deepseek_v3.py` `Model.sanitize`): FP8 weights dequantized, experts stacked,
  `self_attn.kv_b_proj` split into `embed_q` and `unembed_out`, and every `model.layers.61` key dropped (the
  MTP layer); its `MoEGate` is no `nn.Linear`, so the router stays unquantized.
- Quantization (`nn.quantize` through `utils.quantize_model`): every module with `to_quantized` whose input
  width divides by the group size, Embedding included; the Qwen3.5 / Qwen3-Next `quant_predicate` gives
  the routers (`mlp.gate`, `shared_expert_gate`) `{"group_size": 64, "bits": 8}`, recorded per module in
  config.json's `quantization`. So in MLX a quantized Linear that vLLM keeps high precision (a router, GDN
  `in_proj_a` / `in_proj_b`, the DSA indexer's `wk` / `weights_proj`) is the converter's default, not a defect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from mtpforge.families.base import CONV, EXPERTS, LINEAR, Family, Inventory, TensorSpec

SWITCH = ".switch_mlp."


def is_mlx_layout(names: Iterable[str], wrapper: str) -> bool:
    """True when the stored names are mlx-lm's: stacked `switch_mlp` experts, or the family's MLX wrapper path."""
    return any(SWITCH in n or (wrapper and n.startswith(wrapper + "model.")) for n in names)


def mlx_inventory(inv: Inventory, trunk_prefix: str, wrapper: str, mla: MlaDims | None = None) -> Inventory:
    """`inv` (built per-expert, without the vision tower) under mlx-lm's names and shapes.

    Args:
        trunk_prefix: the language model's module path in `inv` (`model.language_model` or `model`).
        wrapper: the path mlx-lm's `Model` puts the text model under (`language_model.` for Qwen3.5, else "").
        mla: the MLA dimensions, for families whose `kv_b_proj` mlx-lm splits (DeepSeek-V3 / R1, GLM-5).
    """
    out = Inventory()
    stacked: dict[str, list[TensorSpec]] = {}
    for name, spec in inv.items():
        if mla is not None and name.endswith(".self_attn.kv_b_proj.weight"):
            _split_kv_b(out, spec, mla, trunk_prefix, wrapper)
            continue
        at = name.find(".experts.")
        if spec.expert and at >= 0 and name[at + 9:at + 10].isdigit():
            proj = name.rsplit(".", 2)[-2]  # gate_proj / up_proj / down_proj
            stacked.setdefault(f"{name[:at]}{SWITCH}{proj}.weight", []).append(spec)
            continue
        new = _rename(name, trunk_prefix, wrapper)
        shape = spec.shape
        if spec.kind == CONV and len(shape) == 3:
            shape = (shape[0], shape[2], shape[1])  # torch [out, in/groups, kernel] -> MLX [out, kernel, in/groups]
        # mlx-lm quantizes every Linear it can (routers at 8 bits, GDN in_proj_a / in_proj_b, DSA indexer wk /
        # weights_proj): "keep high precision" is vLLM's rule for its own kernels, not mlx-lm's
        out[new] = replace(spec, name=new, module=_rename(spec.module, trunk_prefix, wrapper), shape=shape,
                           keep_high_precision=spec.keep_high_precision and spec.kind != LINEAR, small_proj=False)
    for name, specs in stacked.items():
        first = specs[0]
        new = _rename(name, trunk_prefix, wrapper)
        module = new.rsplit(".", 1)[0]
        out[new] = replace(first, name=new, module=module, shape=(len(specs), *first.shape), kind=EXPERTS,
                           fused=module.rsplit(".", 1)[0])
    return out


@dataclass(frozen=True)
class MlaDims:
    heads: int
    nope: int  # qk_nope_head_dim
    v: int  # v_head_dim
    kv_lora: int  # kv_lora_rank


def _split_kv_b(out: Inventory, spec: TensorSpec, d: MlaDims, trunk_prefix: str, wrapper: str) -> None:
    """mlx-lm's DeepSeek `sanitize` splits `kv_b_proj` [H*(nope+v), kv_lora] into two per-head `MultiLinear`s:
    `embed_q` [H, kv_lora, nope] (the key half, transposed) and `unembed_out` [H, v, kv_lora] (the value half)."""
    attn = _rename(spec.module.rsplit(".", 1)[0], trunk_prefix, wrapper)
    for part, shape in (("embed_q", (d.heads, d.kv_lora, d.nope)), ("unembed_out", (d.heads, d.v, d.kv_lora))):
        name = f"{attn}.{part}.weight"
        out[name] = replace(spec, name=name, module=f"{attn}.{part}", shape=shape, fused=None)


def _rename(name: str, trunk_prefix: str, wrapper: str) -> str:
    if name.startswith(trunk_prefix + "."):
        return f"{wrapper}model.{name[len(trunk_prefix) + 1:]}"
    return wrapper + name


def mlx_quantized(config: dict[str, Any]) -> bool:
    """True for a config mlx-lm quantized: `quantization` {group_size, bits, ...} and no `quant_method`."""
    quant = config.get("quantization")
    return isinstance(quant, dict) and "bits" in quant and "quant_method" not in quant


def mla_dims(family: Family, config: dict[str, Any]) -> MlaDims | None:
    """The MLA dimensions of `config` (None when its attention has no `kv_b_proj`)."""
    keys = ("num_attention_heads", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank")
    values = [family.setting(config, k) for k in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    return MlaDims(*values)

"""Qwen3.5 / Qwen3.6, dense (`qwen3_5`) and MoE (`qwen3_5_moe`).

Two layouts share one family: the vision-language wrapper
(`Qwen3_5ForConditionalGeneration`: `text_config`, `model.language_model.*`,
`model.visual.*`) and the text-only class (`Qwen3_5ForCausalLM`: flat config,
`model.*`). The MTP depth is `mtp_num_hidden_layers` (vLLM `qwen3_5_mtp.py`).
"""

from __future__ import annotations

from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import Family, Inventory
from mtpforge.families.mlx_names import mlx_quantized


class Qwen35Family(Family):
    """Gated DeltaNet + gated full attention, split GDN projections, optional vision tower."""

    mtp_config_key = "mtp_num_hidden_layers"
    mlx_wrapper = "language_model."  # mlx_lm/models/qwen3_5.py: `Model.language_model` (a `TextModel`)

    def __init__(self, *, moe: bool) -> None:
        self.moe = moe
        self.name = "qwen3_5_moe" if moe else "qwen3_5"
        self.model_types = (self.name, f"{self.name}_text")

    def text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        text = config.get("text_config")
        return text if isinstance(text, dict) else config

    def is_wrapper(self, config: dict[str, Any]) -> bool:
        """True for the vision-language layout (`model.language_model.*` names)."""
        archs = config.get("architectures") or []
        return "text_config" in config or any("ConditionalGeneration" in a for a in archs)

    def has_vision(self, config: dict[str, Any]) -> bool:
        # mlx-lm's converter drops the tower (`Model.sanitize` skips `model.visual`) but keeps vision_config;
        # its quantized exports say so by a `quantization` object without quant_method (a BF16 one cannot)
        return self.is_wrapper(config) and isinstance(config.get("vision_config"), dict) and not mlx_quantized(config)

    def trunk_prefix(self, config: dict[str, Any]) -> str:
        return "model.language_model" if self.is_wrapper(config) else "model"

    def trunk_prefixes(self, config: dict[str, Any]) -> tuple[str, ...]:
        # vLLM's text-only class maps `model.language_model.` to `model.` ("community text-only checkpoints keep the
        # extraneous prefix", vllm/model_executor/models/qwen3_5.py, Qwen3_5ForCausalLMBase.hf_to_vllm_mapper), so a
        # text-only export that kept the wrapper's names loads as it is. The wrapper class has no such mapping.
        return ("model.language_model",) if self.is_wrapper(config) else ("model", "model.language_model")

    def head_dims(self, config: dict[str, Any]) -> dict[str, Any]:
        return dict(blocks.head_dims(blocks.read_dims(self, config)))

    def expected(self, config: dict[str, Any], *, fused_experts: bool = True, vision: bool | None = None,
                 mtp_fused_experts: bool | None = None, prefix: str | None = None) -> Inventory:
        d = blocks.read_dims(self, config)
        dtype = self.dtype(config)
        inv = Inventory()
        blocks.trunk(inv, prefix or self.trunk_prefix(config), d, dtype=dtype, gdn_fused=False,
                     is_moe_layer=lambda i: self.moe, fused_experts=fused_experts)
        head_fused = fused_experts if mtp_fused_experts is None else mtp_fused_experts
        blocks.mtp_head(inv, d, self.mtp_layers(config), moe=self.moe, fused_experts=head_fused, dtype=dtype)
        if vision if vision is not None else self.has_vision(config):
            blocks.vision_tower(inv, self.vision_prefix, config.get("vision_config") or {}, dtype)
        return inv


QWEN3_5 = Qwen35Family(moe=False)
QWEN3_5_MOE = Qwen35Family(moe=True)

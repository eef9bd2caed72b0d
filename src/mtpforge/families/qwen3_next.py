"""Qwen3-Next (`qwen3_next`): flat config, `model.*` names, fused GDN projections.

MoE layers follow transformers: layer i is sparse when it is not in
`mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`. The MTP depth is
`num_nextn_predict_layers`, which vLLM defaults to 1 when absent
(`qwen3_next_mtp.py`), so an absent key still declares one MTP layer.
"""

from __future__ import annotations

from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import Family, Inventory


class Qwen3NextFamily(Family):
    """Gated DeltaNet (fused `in_proj_qkvz` / `in_proj_ba`) + gated attention, sparse MoE."""

    name = "qwen3_next"
    model_types = ("qwen3_next",)
    mtp_config_key = "num_nextn_predict_layers"
    vllm_legacy_method = "qwen3_next_mtp"

    def mtp_layers(self, config: dict[str, Any]) -> int:
        if self.mtp_config_key not in config:
            return 1
        return super().mtp_layers(config)

    def head_dims(self, config: dict[str, Any]) -> dict[str, Any]:
        return dict(blocks.head_dims(blocks.read_dims(self, config)))

    def expected(self, config: dict[str, Any], *, fused_experts: bool = True, vision: bool | None = None,
                 mtp_fused_experts: bool | None = None, prefix: str | None = None) -> Inventory:
        d = blocks.read_dims(self, config)
        dtype = self.dtype(config)
        step = int(config.get("decoder_sparse_step", 1) or 1)
        dense_layers = set(config.get("mlp_only_layers") or [])

        def is_moe_layer(i: int) -> bool:
            return d.num_experts > 0 and i not in dense_layers and (i + 1) % step == 0

        inv = Inventory()
        blocks.trunk(inv, prefix or "model", d, dtype=dtype, gdn_fused=True, is_moe_layer=is_moe_layer,
                     fused_experts=fused_experts)
        head_fused = fused_experts if mtp_fused_experts is None else mtp_fused_experts
        blocks.mtp_head(inv, d, self.mtp_layers(config), moe=d.num_experts > 0, fused_experts=head_fused, dtype=dtype)
        return inv


QWEN3_NEXT = Qwen3NextFamily()

"""GLM-4.5 / 4.6 / 4.7 (`glm4_moe`) and GLM-5 (`glm_moe_dsa`).

GLM-4.x: grouped-query attention with q/k/v biases (`attention_bias`) and
optional per-head `q_norm` / `k_norm` (`use_qk_norm`), DeepSeek-style MoE
(`n_routed_experts`, `shared_experts`, an F32 `gate.e_score_correction_bias`
that vLLM's `Glm4MoE` always creates), `first_k_dense_replace` dense layers,
and NextN MTP layers at `model.layers.{num_hidden_layers}` (92 for GLM-4.5 /
4.6 / 4.7, 46 for the Air models): vllm/model_executor/models/glm4_moe.py,
glm4_moe_mtp.py. GLM-4.7 ships the MTP layer in its own `mtp.safetensors`
shard; a shard's file name means nothing to the rules, only whether the index
lists it.

GLM-5 is DeepSeek-V3's MLA + MoE with the DSA indexer (families/deepseek.py);
vLLM builds its draft with `DeepSeekMTP` (speculative.py maps `glm_moe_dsa` to
`deepseek_mtp`). Its MTP layer `model.layers.78` carries no `embed_tokens` nor
`shared_head.head`: the proposer shares the target's (families/nextn.py).
"""

from __future__ import annotations

from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import Inventory
from mtpforge.families.deepseek import DeepSeekFamily
from mtpforge.families.nextn import NextnFamily


class Glm4MoeFamily(NextnFamily):
    """GLM-4.5 / 4.6 / 4.7 and their Air variants."""

    name = "glm4_moe"
    model_types = ("glm4_moe",)
    vllm_legacy_method = "glm4_moe_mtp"

    def attention(self, inv: Inventory, p: str, config: dict[str, Any], role: dict[str, Any]) -> None:
        get, req = self.setting, self.require
        hidden = req(config, "hidden_size", get(config, "hidden_size"))
        heads = req(config, "num_attention_heads", get(config, "num_attention_heads"))
        blocks.plain_attention(
            inv, p, hidden=hidden, heads=heads,
            kv_heads=req(config, "num_key_value_heads", get(config, "num_key_value_heads", heads)),
            head_dim=req(config, "head_dim", get(config, "head_dim", hidden // max(heads, 1))),
            bias=bool(get(config, "attention_bias", False)), qk_norm=bool(get(config, "use_qk_norm", False)), **role)


GLM4_MOE = Glm4MoeFamily()
GLM_MOE_DSA = DeepSeekFamily("glm_moe_dsa", ("glm_moe_dsa",), indexer=True)

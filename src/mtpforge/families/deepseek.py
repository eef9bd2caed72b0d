"""DeepSeek-V3 / R1 / V3.1 (`deepseek_v3`) and, with the DSA indexer, DeepSeek-V3.2 (`deepseek_v32`) and GLM-5
(`glm_moe_dsa`, families/glm.py).

Multi-head latent attention (MLA), as vLLM's `DeepseekV2MLAAttention` builds it
(vllm/model_executor/models/deepseek_v2.py) and DeepSeek-R1's checkpoint stores it:
`q_a_proj` [q_lora_rank, H] + `q_a_layernorm` + `q_b_proj` [heads x (nope + rope),
q_lora_rank] (or one `q_proj` when `q_lora_rank` is null), `kv_a_proj_with_mqa`
[kv_lora_rank + rope, H] + `kv_a_layernorm`, `kv_b_proj` [heads x (nope + v),
kv_lora_rank], `o_proj` [H, heads x v]. vLLM fuses `q_a_proj` and
`kv_a_proj_with_mqa` into `fused_qkv_a_proj`. The KV cache holds the latent:
`kv_lora_rank + qk_rope_head_dim` values per token and layer, on every GPU (not
split by tensor parallelism, not doubled for K and V).

The DSA indexer (DeepSeek-V3.2, GLM-5) adds `indexer.wq_b` [index_n_heads x
index_head_dim, q_lora_rank], `indexer.wk` [index_head_dim, H], `indexer.k_norm`
(a LayerNorm: weight and bias) and `indexer.weights_proj` [index_n_heads, H];
vLLM fuses `wk` and `weights_proj` into one unquantized GEMM (`wk_weights_proj`,
`quant_config=None`), so those two stay high precision.
"""

from __future__ import annotations

from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import ATTENTION_BLOCK, PARAM, Inventory
from mtpforge.families.nextn import NextnFamily


class DeepSeekFamily(NextnFamily):
    """MLA attention, DeepSeek MoE, NextN MTP layers; `indexer` adds GLM-5's / V3.2's DSA indexer."""

    vllm_legacy_method = "deepseek_mtp"
    kv_block_size = 64  # FlashMLA's only page size (vllm/v1/attention/backends/mla/flashmla.py)

    def __init__(self, name: str, model_types: tuple[str, ...], *, indexer: bool) -> None:
        self.name = name
        self.model_types = model_types
        self.indexer = indexer

    def has_score_bias(self, config: dict[str, Any]) -> bool:
        # vLLM creates `gate.e_score_correction_bias` only for `topk_method: noaux_tc` (DeepseekV2MoE).
        return self.setting(config, "topk_method") == "noaux_tc"

    def mla(self, config: dict[str, Any]) -> dict[str, int]:
        get, req = self.setting, self.require
        q_lora = get(config, "q_lora_rank")
        return {
            "hidden": req(config, "hidden_size", get(config, "hidden_size")),
            "heads": req(config, "num_attention_heads", get(config, "num_attention_heads")),
            "q_lora": 0 if q_lora is None else req(config, "q_lora_rank", q_lora),
            "kv_lora": req(config, "kv_lora_rank", get(config, "kv_lora_rank")),
            "nope": req(config, "qk_nope_head_dim", get(config, "qk_nope_head_dim")),
            "rope": req(config, "qk_rope_head_dim", get(config, "qk_rope_head_dim")),
            "v": req(config, "v_head_dim", get(config, "v_head_dim")),
        }

    def attention(self, inv: Inventory, p: str, config: dict[str, Any], role: dict[str, Any]) -> None:
        m = self.mla(config)
        role = {**role, "block": ATTENTION_BLOCK}
        fused_a = f"{p}.fused_qkv_a_proj" if m["q_lora"] else None
        q_out = m["heads"] * (m["nope"] + m["rope"])
        if m["q_lora"]:
            blocks.linear(inv, f"{p}.q_a_proj.weight", m["q_lora"], m["hidden"], fused=fused_a, **role)
            blocks.norm(inv, f"{p}.q_a_layernorm.weight", m["q_lora"], offset=False, **role)
            blocks.linear(inv, f"{p}.q_b_proj.weight", q_out, m["q_lora"], **role)
        else:
            blocks.linear(inv, f"{p}.q_proj.weight", q_out, m["hidden"], **role)
        blocks.linear(inv, f"{p}.kv_a_proj_with_mqa.weight", m["kv_lora"] + m["rope"], m["hidden"], fused=fused_a, **role)
        blocks.norm(inv, f"{p}.kv_a_layernorm.weight", m["kv_lora"], offset=False, **role)
        blocks.linear(inv, f"{p}.kv_b_proj.weight", m["heads"] * (m["nope"] + m["v"]), m["kv_lora"], **role)
        blocks.linear(inv, f"{p}.o_proj.weight", m["hidden"], m["heads"] * m["v"], **role)
        if self.indexer:
            self.dsa_indexer(inv, f"{p}.indexer", config, m, role)

    def dsa_indexer(self, inv: Inventory, p: str, config: dict[str, Any], m: dict[str, int], role: dict[str, Any]) -> None:
        heads = self.require(config, "index_n_heads", self.setting(config, "index_n_heads"))
        head_dim = self.require(config, "index_head_dim", self.setting(config, "index_head_dim"))
        blocks.linear(inv, f"{p}.wq_b.weight", heads * head_dim, m["q_lora"] or m["hidden"], **role)
        fused = f"{p}.wk_weights_proj"
        blocks.linear(inv, f"{p}.wk.weight", head_dim, m["hidden"], fused=fused, keep_high_precision=True, **role)
        blocks.linear(inv, f"{p}.weights_proj.weight", heads, m["hidden"], fused=fused, keep_high_precision=True, **role)
        blocks.norm(inv, f"{p}.k_norm.weight", head_dim, offset=False, **role)
        inv.add(f"{p}.k_norm.bias", (head_dim,), kind=PARAM, keep_high_precision=True, **role)

    def kv_bytes_per_token(self, config: dict[str, Any], kv_bytes: int, tensor_parallel: int) -> int:
        m = self.mla(config)
        latent = (m["kv_lora"] + m["rope"]) * kv_bytes  # one latent per token, replicated on every GPU
        if not self.indexer:
            return latent
        # the indexer's key cache: FP8 values + one F32 scale per 128 (DeepseekV32IndexerCache, uint8)
        head_dim = self.require(config, "index_head_dim", self.setting(config, "index_head_dim"))
        return latent + head_dim + head_dim // 128 * 4


DEEPSEEK_V3 = DeepSeekFamily("deepseek_v3", ("deepseek_v3",), indexer=False)
# DeepSeek-V3.2-Exp: V3 plus the DSA indexer (index_n_heads 64, index_head_dim 128); vLLM drafts with DeepSeekMTP too.
DEEPSEEK_V32 = DeepSeekFamily("deepseek_v32", ("deepseek_v32",), indexer=True)

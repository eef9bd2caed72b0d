"""Families whose MTP layers are extra decoder layers after the trunk's (DeepSeek-V3 "NextN").

DeepSeek-V3 / R1 / V3.1, GLM-4.5 / 4.6 / 4.7 and GLM-5 store MTP layer j at
`model.layers.{num_hidden_layers + j}`: a full decoder layer of the trunk's
kind plus `enorm`, `hnorm`, `eh_proj` ([H, 2H], over [embedding, hidden]) and
`shared_head.norm`; `embed_tokens` and `shared_head.head` copies are optional,
since vLLM's MTP proposer always takes the target's embedding and lm_head
(`_maybe_share_embeddings` / `_maybe_share_lm_head` in
vllm/v1/spec_decode/llm_base_proposer.py: "Detected MTP model. Sharing target
model ... weights"). GLM-5 ships neither copy; DeepSeek-R1 ships both.

The depth is `num_nextn_predict_layers` (vllm/config/speculative.py reads it as
`n_predict`). Layer i is a MoE layer when `i >= first_k_dense_replace` and
`i % moe_layer_freq == 0` (vLLM `DeepseekV2DecoderLayer`, `Glm4MoeDecoderLayer`),
so the MTP layer is a MoE layer. Every RMSNorm multiplies by its stored weight
(vLLM `RMSNorm`, not `GemmaRMSNorm`): the norms carry no `1 + w` offset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import (
    EMBEDDING,
    EXPERTS,
    FULL_ATTENTION,
    LINEAR,
    MLP_BLOCK,
    MTP,
    MTP_FC_BLOCK,
    PARAM,
    Family,
    Inventory,
)


@dataclass(frozen=True)
class MoeDims:
    """The dimensions every NextN family reads (attention ones are read by the family itself)."""

    hidden: int
    intermediate: int
    vocab: int
    layers: int
    experts: int
    moe_intermediate: int
    shared_experts: int
    first_dense: int
    moe_freq: int
    tied: bool
    score_bias: bool  # routers carry an F32 `e_score_correction_bias`

    def is_moe_layer(self, i: int) -> bool:
        return self.experts > 0 and i >= self.first_dense and i % self.moe_freq == 0


class NextnFamily(Family):
    """MTP layers at `model.layers.{num_hidden_layers + j}`; subclasses build the attention."""

    mtp_config_key = "num_nextn_predict_layers"
    hybrid = False
    expert_config_key = "n_routed_experts"
    # num_hidden_layers too: the head's names carry the trunk's depth (`model.layers.{num_hidden_layers}`)
    head_dim_keys = ("num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
                     "first_k_dense_replace", "moe_layer_freq", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                     "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim", "attention_bias", "use_qk_norm")
    mtp_start: int | None = None  # num_hidden_layers of the bound config

    def bind(self, config: dict[str, Any]) -> Family:
        bound = copy.copy(self)
        bound.mtp_start = self.require(config, "num_hidden_layers", self.setting(config, "num_hidden_layers"))
        bound.mtp_prefix = f"model.layers.{bound.mtp_start}"
        return bound

    def is_mtp(self, name: str) -> bool:
        if self.mtp_start is None or not name.startswith("model.layers."):
            return False
        end = name.find(".", 13)
        index = name[13:end] if end > 0 else name[13:]
        return index.isdigit() and int(index) >= self.mtp_start

    def mtp_layer_index(self, name: str) -> int | None:
        parts = name.split(".")
        if self.group_of(name) != MTP or self.mtp_start is None:
            return None
        return int(parts[2]) - self.mtp_start

    def dims(self, config: dict[str, Any]) -> MoeDims:
        get, req = self.setting, self.require
        experts = req(config, "n_routed_experts", get(config, "n_routed_experts", 0) or 0)
        return MoeDims(
            hidden=req(config, "hidden_size", get(config, "hidden_size")),
            intermediate=req(config, "intermediate_size", get(config, "intermediate_size", 0) or 0),
            vocab=req(config, "vocab_size", get(config, "vocab_size")),
            layers=req(config, "num_hidden_layers", get(config, "num_hidden_layers")),
            experts=experts,
            moe_intermediate=req(config, "moe_intermediate_size", get(config, "moe_intermediate_size", 0) or 0),
            shared_experts=req(config, "n_shared_experts", get(config, "n_shared_experts", 0) or 0),
            first_dense=req(config, "first_k_dense_replace", get(config, "first_k_dense_replace", 0) or 0),
            moe_freq=max(1, req(config, "moe_layer_freq", get(config, "moe_layer_freq", 1) or 1)),
            tied=bool(get(config, "tie_word_embeddings", False)),
            score_bias=self.has_score_bias(config),
        )

    def has_score_bias(self, config: dict[str, Any]) -> bool:
        """Whether routers carry `gate.e_score_correction_bias` (vLLM's Glm4MoE always creates it)."""
        return True

    def attention(self, inv: Inventory, p: str, config: dict[str, Any], role: dict[str, Any]) -> None:
        """The `self_attn` tensors of one decoder layer at module path `p`."""
        raise NotImplementedError

    def expected(self, config: dict[str, Any], *, fused_experts: bool = True, vision: bool | None = None,
                 mtp_fused_experts: bool | None = None, prefix: str | None = None) -> Inventory:
        d = self.dims(config)
        dtype = self.dtype(config)
        inv = Inventory()
        inv.add("model.embed_tokens.weight", (d.vocab, d.hidden), kind=EMBEDDING, group="embeddings", dtype=dtype)
        for i in range(d.layers):
            self.decoder_layer(inv, f"model.layers.{i}", i, config, d, {"group": "trunk", "dtype": dtype, "layer": i},
                               fused_experts=fused_experts)
        blocks.norm(inv, "model.norm.weight", d.hidden, offset=False, group="trunk", dtype=dtype)
        if not d.tied:
            blocks.linear(inv, "lm_head.weight", d.vocab, d.hidden, group="embeddings", dtype=dtype)
        head_fused = fused_experts if mtp_fused_experts is None else mtp_fused_experts
        for j in range(self.mtp_layers(config)):
            i = d.layers + j
            p = f"model.layers.{i}"
            role: dict[str, Any] = {"group": MTP, "dtype": dtype, "layer": j}
            blocks.norm(inv, f"{p}.enorm.weight", d.hidden, offset=False, **role)
            blocks.norm(inv, f"{p}.hnorm.weight", d.hidden, offset=False, **role)
            # vLLM builds eh_proj as a plain `nn.Linear` (deepseek_mtp.py, glm4_moe_mtp.py): no scheme ever applies
            # to it, so it is stored and loaded unquantized (DeepSeek-R1's FP8 checkpoint stores it BF16).
            blocks.linear(inv, f"{p}.eh_proj.weight", d.hidden, 2 * d.hidden, block=MTP_FC_BLOCK, keep_high_precision=True,
                          **role)
            blocks.norm(inv, f"{p}.shared_head.norm.weight", d.hidden, offset=False, **role)
            # the layer's own lm_head (a ParallelLMHead, quantized only as an lm_head is): an output embedding
            inv.add(f"{p}.shared_head.head.weight", (d.vocab, d.hidden), kind=EMBEDDING, optional=True, **role)
            inv.add(f"{p}.embed_tokens.weight", (d.vocab, d.hidden), kind=EMBEDDING, optional=True, **role)
            self.decoder_layer(inv, p, i, config, d, role, fused_experts=head_fused)
        return inv

    def decoder_layer(self, inv: Inventory, p: str, i: int, config: dict[str, Any], d: MoeDims, role: dict[str, Any],
                      *, fused_experts: bool) -> None:
        role = {**role, "layer_kind": FULL_ATTENTION}
        blocks.norm(inv, f"{p}.input_layernorm.weight", d.hidden, offset=False, **role)
        blocks.norm(inv, f"{p}.post_attention_layernorm.weight", d.hidden, offset=False, **role)
        self.attention(inv, f"{p}.self_attn", config, role)
        if d.is_moe_layer(i):
            self.moe(inv, f"{p}.mlp", d, fused_experts=fused_experts, **role)
        else:
            blocks.dense_mlp(inv, f"{p}.mlp", d.hidden, d.intermediate, **role)

    def moe(self, inv: Inventory, p: str, d: MoeDims, *, fused_experts: bool, **role: Any) -> None:
        """Router (+ its F32 score-correction bias), routed experts and the shared experts (DeepSeek naming)."""
        role = {**role, "block": MLP_BLOCK}
        inv.add(f"{p}.gate.weight", (d.experts, d.hidden), kind=LINEAR, keep_high_precision=True, **role)
        if d.score_bias:
            inv.add(f"{p}.gate.e_score_correction_bias", (d.experts,), kind=PARAM, keep_high_precision=True,
                    **{**role, "dtype": "F32"})
        experts = f"{p}.experts"
        if fused_experts:  # transformers v5's layout; vLLM's expert mapping also takes it
            inv.add(f"{experts}.gate_up_proj", (d.experts, 2 * d.moe_intermediate, d.hidden),
                    kind=EXPERTS, fused=experts, expert=True, **role)
            inv.add(f"{experts}.down_proj", (d.experts, d.hidden, d.moe_intermediate),
                    kind=EXPERTS, fused=experts, expert=True, **role)
        else:
            blocks.per_expert(inv, experts, d.experts, d.hidden, d.moe_intermediate, **role)
        if d.shared_experts:
            blocks.dense_mlp(inv, f"{p}.shared_experts", d.hidden, d.moe_intermediate * d.shared_experts, **role)

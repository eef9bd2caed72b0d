"""MiMo-7B (`mimo`): a Qwen2 decoder whose MTP layers live at `model.mtp_layers.{j}`.

Each MTP layer (vllm/model_executor/models/mimo_mtp.py, `MiMoMultiTokenPredictorLayer`)
is `token_layernorm` and `hidden_layernorm` over [embedding, hidden], `input_proj`
[H, 2H], a Qwen2 decoder layer (q/k/v with biases, SwiGLU MLP) stored under the
layer's own path (vLLM maps `.self_attn.` to `.mtp_block.self_attn.`), and
`final_layernorm`. The embedding and lm_head are the trunk's. The depth is
`num_nextn_predict_layers`; the RMSNorms are plain `x * w`.
"""

from __future__ import annotations

from typing import Any

from mtpforge.families import blocks
from mtpforge.families.base import EMBEDDING, FULL_ATTENTION, MTP, MTP_FC_BLOCK, Family, Inventory


class MimoFamily(Family):
    """Qwen2-style dense trunk, `model.mtp_layers.*` head."""

    name = "mimo"
    model_types = ("mimo",)
    mtp_config_key = "num_nextn_predict_layers"
    mtp_prefix = "model.mtp_layers"
    hybrid = False
    vllm_legacy_method = "mimo_mtp"

    def mtp_layer_index(self, name: str) -> int | None:
        parts = name.split(".")  # model.mtp_layers.{j}.*
        return int(parts[2]) if name.startswith(self.mtp_prefix + ".") and len(parts) > 2 and parts[2].isdigit() else None

    def expected(self, config: dict[str, Any], *, fused_experts: bool = True, vision: bool | None = None,
                 mtp_fused_experts: bool | None = None, prefix: str | None = None) -> Inventory:
        get, req = self.setting, self.require
        hidden = req(config, "hidden_size", get(config, "hidden_size"))
        vocab = req(config, "vocab_size", get(config, "vocab_size"))
        inter = req(config, "intermediate_size", get(config, "intermediate_size"))
        dtype = self.dtype(config)
        inv = Inventory()
        inv.add("model.embed_tokens.weight", (vocab, hidden), kind=EMBEDDING, group="embeddings", dtype=dtype)
        for i in range(req(config, "num_hidden_layers", get(config, "num_hidden_layers"))):
            self.decoder_layer(inv, f"model.layers.{i}", config, hidden, inter,
                               group="trunk", dtype=dtype, layer=i, layer_kind=FULL_ATTENTION)
        blocks.norm(inv, "model.norm.weight", hidden, offset=False, group="trunk", dtype=dtype)
        if not get(config, "tie_word_embeddings", False):
            blocks.linear(inv, "lm_head.weight", vocab, hidden, group="embeddings", dtype=dtype)
        for j in range(self.mtp_layers(config)):
            p = f"{self.mtp_prefix}.{j}"
            role: dict[str, Any] = {"group": MTP, "dtype": dtype, "layer": j, "layer_kind": FULL_ATTENTION}
            blocks.norm(inv, f"{p}.token_layernorm.weight", hidden, offset=False, **role)
            blocks.norm(inv, f"{p}.hidden_layernorm.weight", hidden, offset=False, **role)
            # a plain `nn.Linear` in vLLM (mimo_mtp.py): never quantized, whatever the config says
            blocks.linear(inv, f"{p}.input_proj.weight", hidden, 2 * hidden, block=MTP_FC_BLOCK, keep_high_precision=True,
                          **role)
            self.decoder_layer(inv, p, config, hidden, inter, **role)
            blocks.norm(inv, f"{p}.final_layernorm.weight", hidden, offset=False, **role)
        return inv

    def decoder_layer(self, inv: Inventory, p: str, config: dict[str, Any], hidden: int, inter: int, **role: Any) -> None:
        get, req = self.setting, self.require
        heads = req(config, "num_attention_heads", get(config, "num_attention_heads"))
        blocks.norm(inv, f"{p}.input_layernorm.weight", hidden, offset=False, **role)
        blocks.norm(inv, f"{p}.post_attention_layernorm.weight", hidden, offset=False, **role)
        blocks.plain_attention(
            inv, f"{p}.self_attn", hidden=hidden, heads=heads,
            kv_heads=req(config, "num_key_value_heads", get(config, "num_key_value_heads", heads)),
            head_dim=req(config, "head_dim", get(config, "head_dim", hidden // max(heads, 1))),
            bias=bool(get(config, "attention_bias", True)), qk_norm=False, **role)
        blocks.dense_mlp(inv, f"{p}.mlp", hidden, inter, **role)


MIMO = MimoFamily()

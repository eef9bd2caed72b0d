"""The MTP head exactly as vLLM runs it (`vllm/model_executor/models/qwen3_5_mtp.py`, v0.32):

    e = pre_fc_norm_embedding(embed_tokens(token t+1))
    h = pre_fc_norm_hidden(hidden_t)            # the trunk's post-final-norm hidden state
    x = fc(cat([e, h]))                          # concatenation order: [embedding, hidden]
    x = layers[step % n](x, positions)           # a full-attention decoder layer with its own KV cache
    out = norm(x)                                # its hidden feeds the next draft step
    logits = lm_head(out)                        # shared with the trunk, as is embed_tokens

Built from the family's own transformers modules (Gemma-style RMSNorm `x * (1 + w)`,
gated attention, the dense or sparse-MoE MLP, rotary embedding), so the head's math is the trunk's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from mtpforge.reference.classes import RUNTIMES, Runtime


def head_config(text_config: Any, layers: int) -> Any:
    """The text config of the head: `layers` full-attention layers, sdpa attention (causal without a mask)."""
    cfg = copy.deepcopy(text_config)
    cfg.num_hidden_layers = layers
    cfg.layer_types = ["full_attention"] * layers
    cfg._attn_implementation = "sdpa"
    return cfg


class MtpHead(nn.Module):
    """`mtp.*` of a Qwen3.5 checkpoint: norms, fc and full-attention decoder layers."""

    def __init__(self, text_config: Any, layers: int = 1, runtime: Runtime = RUNTIMES["qwen3_5"]) -> None:
        super().__init__()
        cfg = head_config(text_config, layers)
        self.config = cfg
        self.mrope = runtime.mrope
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.pre_fc_norm_embedding = runtime.rms_norm(h, eps=eps)
        self.pre_fc_norm_hidden = runtime.rms_norm(h, eps=eps)
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList([runtime.decoder_layer(cfg, i) for i in range(layers)])
        self.norm = runtime.rms_norm(h, eps=eps)
        self.rotary_emb = runtime.rotary(cfg)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, *, step: int = 0,
                cache: DynamicCache | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One draft step for a run of positions.

        Args:
            embeds: `embed_tokens` of the tokens at t+1, [B, T, H].
            hidden: the trunk's post-norm hidden state at t (or the previous step's output), [B, T, H].
            positions: the positions t, [B, T] (vLLM runs the head at the target's positions).
            step: the draft step; selects `layers[step % n]`.
            cache: this layer's KV cache of earlier positions, extended in place.
            attention_mask: which cached and new keys each query sees, bool [B, 1, T, cached + T] (True: attends);
                default causal. Teacher-forced verify runs many draft chains at once with it.

        Returns:
            The head's post-norm hidden state [B, T, H]; `lm_head` of it gives the draft logits.
        """
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(embeds), self.pre_fc_norm_hidden(hidden)], dim=-1))
        rope_positions = positions[None].expand(3, *positions.shape) if self.mrope else positions  # text: t = h = w
        position_embeddings = self.rotary_emb(x, rope_positions)
        layer = self.layers[step % len(self.layers)]
        x = layer(x, position_embeddings=position_embeddings, attention_mask=attention_mask, position_ids=positions,
                  past_key_values=cache, use_cache=cache is not None)
        return self.norm(x)

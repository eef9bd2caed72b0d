"""Building blocks of the Qwen3.5 / Qwen3-Next hybrids: the tensors each module
has, with shapes from the config (docs/domain.md §2) and the engines' fusions.

Shapes follow transformers' modules: gated attention packs query and gate in
`q_proj` (2 x heads x head_dim outputs); GDN has the split layout in Qwen3.5
(`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`) and the fused one in
Qwen3-Next (`in_proj_qkvz`, `in_proj_ba`). vLLM fuses q/k/v into `qkv_proj`,
gate/up into `gate_up_proj`, and the split GDN projections into `in_proj_qkvz`
and `in_proj_ba`, so those members must share one quantization scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtpforge.errors import CheckpointError
from mtpforge.families.base import (
    ATTENTION_BLOCK,
    BIAS,
    CONV,
    EMBEDDING,
    EXPERTS,
    FULL_ATTENTION,
    GDN_BLOCK,
    LINEAR,
    LINEAR_ATTENTION,
    MLP_BLOCK,
    MTP_FC_BLOCK,
    NORM,
    PARAM,
    Family,
    Inventory,
    TensorSpec,
)


@dataclass(frozen=True)
class TextDims:
    """The language model's dimensions, read once from the config."""

    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    lin_k_heads: int
    lin_v_heads: int
    lin_k_dim: int
    lin_v_dim: int
    conv_kernel: int
    layer_types: tuple[str, ...]
    num_experts: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    tied: bool = False

    @property
    def key_dim(self) -> int:
        return self.lin_k_heads * self.lin_k_dim

    @property
    def value_dim(self) -> int:
        return self.lin_v_heads * self.lin_v_dim


def read_dims(family: Family, config: dict[str, Any], *, default_interval: int = 4) -> TextDims:
    """Read `TextDims` from a config, deriving `layer_types` as transformers does when absent."""
    get = family.setting
    req = Family.require
    n_layers = req(config, "num_hidden_layers", get(config, "num_hidden_layers"))
    layer_types = get(config, "layer_types")
    if layer_types is None:
        interval = get(config, "full_attention_interval", default_interval)
        layer_types = [FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION for i in range(n_layers)]
    if (not isinstance(layer_types, list) or len(layer_types) != n_layers
            or not set(layer_types) <= {FULL_ATTENTION, LINEAR_ATTENTION}):
        raise CheckpointError(
            f"config.json: layer_types must list {n_layers} entries of full_attention / linear_attention",
            hint="restore config.json from the base model",
        )
    heads = req(config, "num_attention_heads", get(config, "num_attention_heads"))
    hidden = req(config, "hidden_size", get(config, "hidden_size"))
    return TextDims(
        hidden=hidden,
        intermediate=req(config, "intermediate_size", get(config, "intermediate_size", 0)),
        vocab=req(config, "vocab_size", get(config, "vocab_size")),
        heads=heads,
        kv_heads=req(config, "num_key_value_heads", get(config, "num_key_value_heads", heads)),
        head_dim=req(config, "head_dim", get(config, "head_dim", hidden // max(heads, 1))),
        lin_k_heads=req(config, "linear_num_key_heads", get(config, "linear_num_key_heads")),
        lin_v_heads=req(config, "linear_num_value_heads", get(config, "linear_num_value_heads")),
        lin_k_dim=req(config, "linear_key_head_dim", get(config, "linear_key_head_dim")),
        lin_v_dim=req(config, "linear_value_head_dim", get(config, "linear_value_head_dim")),
        conv_kernel=req(config, "linear_conv_kernel_dim", get(config, "linear_conv_kernel_dim", 4)),
        layer_types=tuple(layer_types),
        num_experts=req(config, "num_experts", get(config, "num_experts", 0) or 0),
        moe_intermediate=req(config, "moe_intermediate_size", get(config, "moe_intermediate_size", 0) or 0),
        shared_intermediate=req(config, "shared_expert_intermediate_size",
                                get(config, "shared_expert_intermediate_size", 0) or 0),
        tied=bool(get(config, "tie_word_embeddings", False)),
    )


def head_dims(d: TextDims) -> dict[str, int]:
    """The hybrids' dimensions a grafted MTP head must share with its trunk (docs/domain.md §2)."""
    names = ("hidden", "vocab", "heads", "kv_heads", "head_dim", "intermediate", "num_experts", "moe_intermediate",
             "shared_intermediate")
    return {n: getattr(d, n) for n in names}


def norm(inv: Inventory, name: str, size: int, *, offset: bool = True, **role: Any) -> None:
    """An RMSNorm weight; Gemma-style ones (`offset`) store `w` and compute `x * (1 + w)`."""
    inv.add(name, (size,), kind=NORM, keep_high_precision=True, norm_offset=offset, **role)


def linear(inv: Inventory, name: str, out: int, inp: int, *, fused: str | None = None, **role: Any) -> None:
    inv.add(name, (out, inp), kind=LINEAR, fused=fused, **role)


def gated_attention(inv: Inventory, p: str, d: TextDims, **role: Any) -> None:
    """`self_attn` of a full-attention layer: q packs query and gate, so 2 x heads x head_dim outputs."""
    role = {**role, "block": ATTENTION_BLOCK}
    qkv = f"{p}.qkv_proj"
    linear(inv, f"{p}.q_proj.weight", 2 * d.heads * d.head_dim, d.hidden, fused=qkv, **role)
    linear(inv, f"{p}.k_proj.weight", d.kv_heads * d.head_dim, d.hidden, fused=qkv, **role)
    linear(inv, f"{p}.v_proj.weight", d.kv_heads * d.head_dim, d.hidden, fused=qkv, **role)
    linear(inv, f"{p}.o_proj.weight", d.hidden, d.heads * d.head_dim, **role)
    norm(inv, f"{p}.q_norm.weight", d.head_dim, **role)
    norm(inv, f"{p}.k_norm.weight", d.head_dim, **role)


def plain_attention(inv: Inventory, p: str, *, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool,
                    qk_norm: bool, **role: Any) -> None:
    """Grouped-query `self_attn` (GLM-4.5, MiMo's Qwen2 layers): q/k/v (+ bias) fused by vLLM into `qkv_proj`,
    optional per-head `q_norm` / `k_norm` (plain RMSNorm weights)."""
    role = {**role, "block": ATTENTION_BLOCK}
    qkv = f"{p}.qkv_proj"
    for proj, out in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim), ("v_proj", kv_heads * head_dim)):
        linear(inv, f"{p}.{proj}.weight", out, hidden, fused=qkv, **role)
        if bias:
            inv.add(f"{p}.{proj}.bias", (out,), kind=BIAS, keep_high_precision=True, **role)
    linear(inv, f"{p}.o_proj.weight", hidden, heads * head_dim, **role)
    if qk_norm:
        norm(inv, f"{p}.q_norm.weight", head_dim, offset=False, **role)
        norm(inv, f"{p}.k_norm.weight", head_dim, offset=False, **role)


def gdn(inv: Inventory, p: str, d: TextDims, *, fused_layout: bool, **role: Any) -> None:
    """`linear_attn` (Gated DeltaNet); conv1d, A_log, dt_bias and the gated norm stay high precision."""
    role = {**role, "block": GDN_BLOCK}
    conv_dim = 2 * d.key_dim + d.value_dim
    if fused_layout:  # Qwen3-Next: per key-head groups [q, k, v, z] and [b, a]
        linear(inv, f"{p}.in_proj_qkvz.weight", 2 * d.key_dim + 2 * d.value_dim, d.hidden, **role)
        linear(inv, f"{p}.in_proj_ba.weight", 2 * d.lin_v_heads, d.hidden, small_proj=True, **role)
    else:  # Qwen3.5: split projections that vLLM fuses back
        linear(inv, f"{p}.in_proj_qkv.weight", conv_dim, d.hidden, fused=f"{p}.in_proj_qkvz", **role)
        linear(inv, f"{p}.in_proj_z.weight", d.value_dim, d.hidden, fused=f"{p}.in_proj_qkvz", **role)
        linear(inv, f"{p}.in_proj_b.weight", d.lin_v_heads, d.hidden, fused=f"{p}.in_proj_ba", small_proj=True, **role)
        linear(inv, f"{p}.in_proj_a.weight", d.lin_v_heads, d.hidden, fused=f"{p}.in_proj_ba", small_proj=True, **role)
    inv.add(f"{p}.conv1d.weight", (conv_dim, 1, d.conv_kernel), kind=CONV, keep_high_precision=True, **role)
    inv.add(f"{p}.dt_bias", (d.lin_v_heads,), kind=PARAM, keep_high_precision=True, **role)
    inv.add(f"{p}.A_log", (d.lin_v_heads,), kind=PARAM, keep_high_precision=True, **role)
    norm(inv, f"{p}.norm.weight", d.lin_v_dim, offset=False, **role)  # RMSNormGated: plain weight
    linear(inv, f"{p}.out_proj.weight", d.hidden, d.value_dim, **role)


def dense_mlp(inv: Inventory, p: str, hidden: int, inter: int, **role: Any) -> None:
    role = {**role, "block": MLP_BLOCK}
    linear(inv, f"{p}.gate_proj.weight", inter, hidden, fused=f"{p}.gate_up_proj", **role)
    linear(inv, f"{p}.up_proj.weight", inter, hidden, fused=f"{p}.gate_up_proj", **role)
    linear(inv, f"{p}.down_proj.weight", hidden, inter, **role)


def per_expert(inv: Inventory, experts: str, count: int, hidden: int, inter: int, **role: Any) -> None:
    """`{experts}.{e}.{gate,up,down}_proj.weight` for every expert: vLLM fuses them all into `experts`.

    The hot loop of the largest inventories (512 experts x 60 layers x 3 on Qwen3.5-397B), so the
    specs are built directly rather than through `linear`."""
    role = {**role, "kind": LINEAR, "fused": experts, "expert": True}
    up, down = (inter, hidden), (hidden, inter)
    for e in range(count):
        for proj, shape in (("gate_proj", up), ("up_proj", up), ("down_proj", down)):
            module = f"{experts}.{e}.{proj}"
            inv[module + ".weight"] = TensorSpec(name=module + ".weight", shape=shape, module=module, **role)


def moe_mlp(inv: Inventory, p: str, d: TextDims, *, fused_experts: bool, **role: Any) -> None:
    """Sparse MoE block: router, experts (fused 3-D or per expert), shared expert and its gate."""
    role = {**role, "block": MLP_BLOCK}
    inv.add(f"{p}.gate.weight", (d.num_experts, d.hidden), kind=LINEAR, keep_high_precision=True, **role)
    experts = f"{p}.experts"
    if fused_experts:
        inv.add(f"{experts}.gate_up_proj", (d.num_experts, 2 * d.moe_intermediate, d.hidden),
                kind=EXPERTS, fused=experts, expert=True, **role)
        inv.add(f"{experts}.down_proj", (d.num_experts, d.hidden, d.moe_intermediate),
                kind=EXPERTS, fused=experts, expert=True, **role)
    else:
        per_expert(inv, experts, d.num_experts, d.hidden, d.moe_intermediate, **role)
    dense_mlp(inv, f"{p}.shared_expert", d.hidden, d.shared_intermediate, **role)
    inv.add(f"{p}.shared_expert_gate.weight", (1, d.hidden), kind=LINEAR, keep_high_precision=True, **role)


def mtp_head(inv: Inventory, d: TextDims, n_layers: int, *, moe: bool, fused_experts: bool, dtype: str) -> None:
    """The MTP head: fc over [embedding, hidden], its norms, and full-attention decoder layers."""
    role: dict[str, Any] = {"group": "mtp", "dtype": dtype}
    linear(inv, "mtp.fc.weight", d.hidden, 2 * d.hidden, block=MTP_FC_BLOCK, **role)
    norm(inv, "mtp.pre_fc_norm_embedding.weight", d.hidden, **role)
    norm(inv, "mtp.pre_fc_norm_hidden.weight", d.hidden, **role)
    norm(inv, "mtp.norm.weight", d.hidden, **role)
    for i in range(n_layers):
        layer_role = {**role, "layer": i, "layer_kind": FULL_ATTENTION}
        p = f"mtp.layers.{i}"
        norm(inv, f"{p}.input_layernorm.weight", d.hidden, **layer_role)
        norm(inv, f"{p}.post_attention_layernorm.weight", d.hidden, **layer_role)
        gated_attention(inv, f"{p}.self_attn", d, **layer_role)
        if moe:
            moe_mlp(inv, f"{p}.mlp", d, fused_experts=fused_experts, **layer_role)
        else:
            dense_mlp(inv, f"{p}.mlp", d.hidden, d.intermediate, **layer_role)


def vision_tower(inv: Inventory, p: str, v: dict[str, Any], dtype: str) -> None:
    """The Qwen3.5 vision tower (ViT blocks, patch embedding, position embedding, merger)."""
    role: dict[str, Any] = {"group": "vision", "dtype": dtype}
    def get(key: str, default: int) -> int:  # bounded by families/limits.py; null means the default, as in transformers
        value = v.get(key)
        return default if value is None else int(value)

    h, inter = get("hidden_size", 1152), get("intermediate_size", 4304)
    patch, temporal = get("patch_size", 16), get("temporal_patch_size", 2)
    merged = h * get("spatial_merge_size", 2) ** 2
    block_linears = (("attn.proj", h, h), ("attn.qkv", 3 * h, h), ("mlp.linear_fc1", inter, h), ("mlp.linear_fc2", h, inter))
    for i in range(get("depth", 27)):
        b = f"{p}.blocks.{i}"
        for mod, out, inp in block_linears:
            linear(inv, f"{b}.{mod}.weight", out, inp, layer=i, **role)
            inv.add(f"{b}.{mod}.bias", (out,), kind=BIAS, layer=i, keep_high_precision=True, **role)
        for n in ("norm1", "norm2"):
            inv.add(f"{b}.{n}.weight", (h,), kind=NORM, layer=i, keep_high_precision=True, **role)
            inv.add(f"{b}.{n}.bias", (h,), kind=BIAS, layer=i, keep_high_precision=True, **role)
    linear(inv, f"{p}.merger.linear_fc1.weight", merged, merged, **role)
    inv.add(f"{p}.merger.linear_fc1.bias", (merged,), kind=BIAS, keep_high_precision=True, **role)
    out_hidden = get("out_hidden_size", 3584)
    linear(inv, f"{p}.merger.linear_fc2.weight", out_hidden, merged, **role)
    inv.add(f"{p}.merger.linear_fc2.bias", (out_hidden,), kind=BIAS, keep_high_precision=True, **role)
    inv.add(f"{p}.merger.norm.weight", (h,), kind=NORM, keep_high_precision=True, **role)
    inv.add(f"{p}.merger.norm.bias", (h,), kind=BIAS, keep_high_precision=True, **role)
    inv.add(f"{p}.patch_embed.proj.weight", (h, get("in_channels", 3), temporal, patch, patch),
            kind=CONV, keep_high_precision=True, **role)
    inv.add(f"{p}.patch_embed.proj.bias", (h,), kind=BIAS, keep_high_precision=True, **role)
    inv.add(f"{p}.pos_embed.weight", (get("num_position_embeddings", 2304), h),
            kind=EMBEDDING, keep_high_precision=True, **role)


def trunk(inv: Inventory, p: str, d: TextDims, *, dtype: str, gdn_fused: bool, is_moe_layer: Any, fused_experts: bool) -> None:
    """Embeddings, decoder layers, final norm and lm_head of the language model at prefix `p`."""
    inv.add(f"{p}.embed_tokens.weight", (d.vocab, d.hidden), kind=EMBEDDING, group="embeddings", dtype=dtype)
    for i, kind in enumerate(d.layer_types):
        role: dict[str, Any] = {"group": "trunk", "dtype": dtype, "layer": i, "layer_kind": kind}
        lp = f"{p}.layers.{i}"
        norm(inv, f"{lp}.input_layernorm.weight", d.hidden, **role)
        norm(inv, f"{lp}.post_attention_layernorm.weight", d.hidden, **role)
        if kind == FULL_ATTENTION:
            gated_attention(inv, f"{lp}.self_attn", d, **role)
        else:
            gdn(inv, f"{lp}.linear_attn", d, fused_layout=gdn_fused, **role)
        if is_moe_layer(i):
            moe_mlp(inv, f"{lp}.mlp", d, fused_experts=fused_experts, **role)
        else:
            dense_mlp(inv, f"{lp}.mlp", d.hidden, d.intermediate, **role)
    norm(inv, f"{p}.norm.weight", d.hidden, group="trunk", dtype=dtype)
    if not d.tied:
        linear(inv, "lm_head.weight", d.vocab, d.hidden, group="embeddings", dtype=dtype)

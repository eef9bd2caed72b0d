"""Bounds on every count and dimension the families read from `config.json`, checked once.

A config is downloaded, so it is untrusted: a count drives loops (layers,
experts, vision blocks) and a dimension drives arithmetic, so a value such as
`mtp_num_hidden_layers: 1e9` must be refused before anything iterates over it.
`detect_family` calls `check_config`, so every verb that reads a config through
a family (inspect, doctor, plan, serve, card, graft, strip, fix, quantize) gets
the same clean CheckpointError (exit 3) naming config.json, the key and the fix.

The caps are far above every real config: the largest values in the public
configs of Qwen3.5 / Qwen3.6 / Qwen3-Next, DeepSeek-V3/R1, GLM-4.5 / GLM-5 and
MiMo (/work/shared/reference/public-configs, tests/test_families_real.py) are 92
layers (GLM-4.5), 512 experts
(Qwen3.5-397B-A17B), 27 vision blocks, hidden size 7168 (DeepSeek-V3), a
248,320-token vocabulary and 262,144 positions; MTP heads have 1 layer.
"""

from __future__ import annotations

import math
from typing import Any

from mtpforge.errors import CheckpointError

MAX_LAYERS = 1024  # trunk, MTP and vision blocks; real configs: at most 92
MAX_EXPERTS = 4096  # real configs: at most 512
MAX_EXPERT_LAYERS = 1 << 17  # layers x experts (per-expert inventories); real: 60 x 512 = 30,720
MAX_DIM = 1 << 24  # hidden, intermediate, head dims, vocabulary; real: at most 248,320
MAX_POSITIONS = 1 << 30  # real: 262,144
MAX_DEPTH = 32  # nesting of config.json; real configs nest 3 deep

# key -> (smallest, largest); counts that drive loops first, then dimensions.
TEXT_INTS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, MAX_LAYERS),
    "mtp_num_hidden_layers": (0, MAX_LAYERS),
    "num_nextn_predict_layers": (0, MAX_LAYERS),
    "full_attention_interval": (1, MAX_LAYERS),
    "decoder_sparse_step": (0, MAX_LAYERS),
    "num_experts": (0, MAX_EXPERTS),
    "num_experts_per_tok": (0, MAX_EXPERTS),
    "num_attention_heads": (1, MAX_DIM),
    "num_key_value_heads": (1, MAX_DIM),
    "head_dim": (1, MAX_DIM),
    "hidden_size": (1, MAX_DIM),
    "intermediate_size": (0, MAX_DIM),
    "moe_intermediate_size": (0, MAX_DIM),
    "shared_expert_intermediate_size": (0, MAX_DIM),
    "vocab_size": (1, MAX_DIM),
    "linear_num_key_heads": (1, MAX_DIM),
    "linear_num_value_heads": (1, MAX_DIM),
    "linear_key_head_dim": (1, MAX_DIM),
    "linear_value_head_dim": (1, MAX_DIM),
    "linear_conv_kernel_dim": (1, 1024),
    "max_position_embeddings": (0, MAX_POSITIONS),
    # DeepSeek / GLM / MiMo (families/nextn.py, deepseek.py, glm.py); q_lora_rank may be null (no q compression)
    "n_routed_experts": (0, MAX_EXPERTS),
    "n_shared_experts": (0, 64),
    "first_k_dense_replace": (0, MAX_LAYERS),
    "moe_layer_freq": (1, MAX_LAYERS),
    "q_lora_rank": (1, MAX_DIM),
    "kv_lora_rank": (1, MAX_DIM),
    "qk_nope_head_dim": (0, MAX_DIM),
    "qk_rope_head_dim": (0, MAX_DIM),
    "v_head_dim": (1, MAX_DIM),
    "index_n_heads": (1, MAX_DIM),
    "index_head_dim": (1, MAX_DIM),
}
VISION_INTS: dict[str, tuple[int, int]] = {
    "depth": (0, MAX_LAYERS),
    "hidden_size": (1, MAX_DIM),
    "intermediate_size": (1, MAX_DIM),
    "out_hidden_size": (1, MAX_DIM),
    "patch_size": (1, 1024),
    "temporal_patch_size": (1, 1024),
    "spatial_merge_size": (1, 64),
    "in_channels": (1, 1024),
    "num_position_embeddings": (1, MAX_DIM),
}
TEXT_STRINGS = ("mamba_ssm_dtype", "dtype", "torch_dtype", "model_type")
_HINT = "restore config.json from the base model"


def check_config(family: Any, config: dict[str, Any]) -> None:
    """Refuse (CheckpointError, exit 3) a config whose counts, dimensions or shapes a family cannot safely read.

    Args:
        family: the `Family` whose `setting` reads the text-config fields.
        config: the parsed config.json.
    """
    check_depth(config)
    for key, (lo, hi) in TEXT_INTS.items():
        value = family.setting(config, key)
        if value is not None:
            integer(key, value, lo, hi)
    for key in TEXT_STRINGS:
        value = family.setting(config, key)
        if value is not None and not isinstance(value, str):
            _refuse(key, "must be a string", value)
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        _refuse("architectures", "must be a list of class names", archs)
    for key in ("layer_types", "mlp_only_layers"):
        value = family.setting(config, key)
        if value is not None and (not isinstance(value, list) or len(value) > MAX_LAYERS):
            _refuse(key, f"must be a list of at most {MAX_LAYERS} entries", value)
    kinds = family.setting(config, "layer_types") or []
    if not all(isinstance(k, str) for k in kinds):
        _refuse("layer_types", "must list full_attention / linear_attention", kinds)
    dense = family.setting(config, "mlp_only_layers") or []
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
        _refuse("mlp_only_layers", "must list layer numbers", dense)
    layers = (family.setting(config, "num_hidden_layers") or 0) + family.mtp_layers(config)
    experts = family.setting(config, "num_experts") or family.setting(config, "n_routed_experts") or 0
    if layers * experts > MAX_EXPERT_LAYERS:
        _refuse("num_experts", f"x the {layers} layers must stay within {MAX_EXPERT_LAYERS:,}", experts)
    vision = config.get("vision_config")
    if vision is not None and not isinstance(vision, dict):
        _refuse("vision_config", "must be an object", vision)
    for key, (lo, hi) in VISION_INTS.items():
        if isinstance(vision, dict) and vision.get(key) is not None:
            integer(f"vision_config.{key}", vision[key], lo, hi)


def integer(key: str, value: Any, lo: int, hi: int) -> int:
    """`value` when it is an int (not a bool, not a float) in [lo, hi]; else CheckpointError naming `key`."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        _refuse(key, f"must be an integer from {lo} to {hi:,}", value)
    return value


def check_depth(doc: Any) -> None:
    """Refuse a config nested deeper than any real one (iteratively: no recursion to exhaust)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CheckpointError(f"config.json: nested more than {MAX_DEPTH} levels deep", hint=_HINT)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _refuse(key: str, rule: str, value: Any) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if isinstance(value, float) and not math.isfinite(value):
        shown = str(value)
    raise CheckpointError(f"config.json: {key} {rule}, got {shown}", hint=_HINT)

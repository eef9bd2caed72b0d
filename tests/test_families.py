"""The family rules derive the full expected inventory from the config alone."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from mtpforge.errors import CheckpointError, UnsupportedFamilyError
from mtpforge.families import FAMILIES, MTP, TRUNK, VISION, detect_family
from mtpforge.families.base import FULL_ATTENTION, LINEAR_ATTENTION
from mtpforge.testing.factory import tiny_config
from mtpforge.testing.replica import reference_inventory

from .conftest import SHARED

REFERENCE = SHARED / "reference" / "qwen3.6-27b"


def _shared_reference() -> tuple[dict, list[dict]]:
    if not REFERENCE.exists():
        pytest.skip("../shared/reference is not beside this checkout")
    config = json.loads((REFERENCE / "config.json").read_text())
    return config, json.loads((REFERENCE / "tensors.json").read_text())["tensors"]


def test_rules_reproduce_the_real_qwen36_27b_inventory_exactly() -> None:
    config, tensors = _shared_reference()
    expected = detect_family(config).expected(config)
    real = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in tensors}
    assert {n: (s.shape, s.dtype) for n, s in expected.items()} == real
    assert len(expected) == 1199
    assert sum(s.numel for s in expected.values()) == 27_781_427_952
    groups = Counter(s.group for s in expected.values())
    assert groups[MTP] == 15 and groups[VISION] == 333


def test_packaged_reference_is_the_shared_one() -> None:
    config, tensors = _shared_reference()
    assert reference_inventory() == (config, tensors)


def test_roles_of_the_27b_tensors() -> None:
    config, _ = reference_inventory()
    inv = detect_family(config).expected(config)
    p = "model.language_model.layers"
    q = inv[f"{p}.3.self_attn.q_proj.weight"]
    assert (q.layer, q.layer_kind, q.fused, q.group) == (3, FULL_ATTENTION, f"{p}.3.self_attn.qkv_proj", TRUNK)
    assert inv[f"{p}.0.linear_attn.in_proj_qkv.weight"].fused == f"{p}.0.linear_attn.in_proj_qkvz"
    assert inv[f"{p}.0.linear_attn.in_proj_a.weight"].small_proj
    for name in (f"{p}.0.linear_attn.conv1d.weight", f"{p}.0.linear_attn.A_log", f"{p}.0.linear_attn.dt_bias",
                 f"{p}.0.linear_attn.norm.weight", "mtp.norm.weight"):
        assert inv[name].keep_high_precision, name
    # Gemma-style offset norms everywhere except the GDN gated norm
    assert inv["mtp.pre_fc_norm_embedding.weight"].norm_offset and inv[f"{p}.3.self_attn.q_norm.weight"].norm_offset
    assert not inv[f"{p}.0.linear_attn.norm.weight"].norm_offset
    assert inv["mtp.layers.0.mlp.gate_proj.weight"].fused == "mtp.layers.0.mlp.gate_up_proj"
    kinds = Counter(s.layer_kind for s in inv.values() if s.group == TRUNK and s.name.endswith("input_layernorm.weight"))
    assert kinds == {LINEAR_ATTENTION: 48, FULL_ATTENTION: 16}


def test_layer_types_default_from_full_attention_interval() -> None:
    config = tiny_config()
    del config["text_config"]["layer_types"]
    config["text_config"]["num_hidden_layers"] = 8
    inv = detect_family(config).expected(config)
    full = sorted({s.layer for s in inv.values() if s.layer_kind == FULL_ATTENTION and s.group == TRUNK})
    assert full == [3, 7]


def test_text_only_class_uses_model_prefix_and_no_vision() -> None:
    config = tiny_config(text_only_arch=True)
    inv = detect_family(config).expected(config)
    assert "model.embed_tokens.weight" in inv and "model.layers.0.linear_attn.in_proj_qkv.weight" in inv
    assert not any(s.group == VISION for s in inv.values())


def test_qwen3_next_fused_gdn_moe_and_implicit_mtp_depth() -> None:
    config = tiny_config("qwen3_next")
    fam = detect_family(config)
    inv = fam.expected(config)
    d = config
    key_dim, value_dim = d["linear_num_key_heads"] * 16, d["linear_num_value_heads"] * 16
    assert inv["model.layers.0.linear_attn.in_proj_qkvz.weight"].shape == (2 * key_dim + 2 * value_dim, 64)
    assert inv["model.layers.0.linear_attn.in_proj_ba.weight"].shape == (2 * d["linear_num_value_heads"], 64)
    assert inv["mtp.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 64)
    assert inv["mtp.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    del config["num_nextn_predict_layers"]
    assert fam.mtp_layers(config) == 1  # vLLM's default when the key is absent


def test_per_expert_layout() -> None:
    config = tiny_config("qwen3_5_moe")
    inv = FAMILIES["qwen3_5_moe"].expected(config, fused_experts=False)
    experts = [n for n in inv if ".mlp.experts." in n]
    # 4 trunk layers + 1 MTP layer, 4 experts, 3 projections
    assert len(experts) == 5 * 4 * 3
    assert inv["mtp.layers.0.mlp.experts.3.down_proj.weight"].shape == (64, 32)


def test_moe_mtp_tensor_count_matches_the_19_of_qwen36_35b() -> None:
    # li-yifei counts 19 MTP tensors for Qwen3.6-35B-A3B (fused experts), docs/domain.md §2.3
    config = tiny_config("qwen3_5_moe")
    inv = FAMILIES["qwen3_5_moe"].expected(config)
    assert sum(1 for s in inv.values() if s.group == MTP) == 19


def test_unknown_family_and_broken_dims_are_clear_errors() -> None:
    with pytest.raises(UnsupportedFamilyError, match="llama"):
        detect_family({"model_type": "llama"})
    config = tiny_config()
    config["text_config"]["hidden_size"] = "big"
    with pytest.raises(CheckpointError, match="hidden_size"):
        detect_family(config).expected(config)
    config = tiny_config()
    config["text_config"]["layer_types"] = ["linear_attention"]
    with pytest.raises(CheckpointError, match="layer_types"):
        detect_family(config).expected(config)


def test_tiny_param_count_is_consistent() -> None:
    config = tiny_config()
    inv = detect_family(config).expected(config)
    assert all(math.prod(s.shape) == s.numel for s in inv.values())

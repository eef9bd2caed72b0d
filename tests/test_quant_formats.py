"""Quantization configs are matched as the engines match them, and stored
quantized weights are recognised as the weights they stand for."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.quant_config import QuantConfigInvalid, parse_ct, parse_modelopt
from mtpforge.formats.synthetic import Format

LAYER = "model.language_model.layers.3"


def test_ct_ignore_regex_is_anchored_like_vllm_re_match() -> None:
    qc = parse_ct(Format("w4a16").config() | {"ignore": ["re:mtp.*", "lm_head"]}, "config.json")
    assert qc.ignores("mtp.fc") and qc.ignores("lm_head")
    assert not qc.ignores("model.mtp.fc")  # re.match anchors at the start
    assert qc.scheme_for(f"{LAYER}.mlp.up_proj") is not None
    assert qc.scheme_for(f"{LAYER}.self_attn.q_norm", is_linear=False) is None  # "Linear" targets Linear only


def test_per_module_ignore_does_not_cover_fused_names() -> None:
    qc = parse_ct(Format("w4a16").config() | {"ignore": ["mtp.layers.0.self_attn.q_proj"]}, "config.json")
    assert qc.ignores("mtp.layers.0.self_attn.q_proj") and not qc.ignores("mtp.layers.0.self_attn.qkv_proj")
    regex = parse_ct(Format("w4a16").config() | {"ignore": ["re:^mtp.*"]}, "config.json")
    assert regex.ignores("mtp.layers.0.self_attn.qkv_proj")


def test_modelopt_excludes_are_fnmatch_wildcards() -> None:
    qc = parse_modelopt(Format("modelopt-nvfp4").hf_quant_config(), "hf_quant_config.json")
    assert qc.ignores("mtp.fc") and qc.ignores("model.visual.blocks.0.attn.qkv")
    assert not qc.ignores(f"{LAYER}.mlp.up_proj")
    assert qc.schemes[0].label == "NVFP4 g16"


@pytest.mark.parametrize("name,label", [("w4a16", "W4A16 int g32"), ("w4a16-asym", "W4A16 int g32 asym"),
                                        ("w8a16", "W8A16 int channel"), ("nvfp4", "NVFP4 g16")])
def test_scheme_labels(name: str, label: str) -> None:
    assert parse_ct(Format(name).config(), "config.json").schemes[0].label == label


@pytest.mark.parametrize("change,reason", [
    ({"config_groups": {}}, "config_groups"),
    ({"config_groups": {"g": {"targets": [], "weights": {"num_bits": 4}}}}, "targets"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "strategy": "group"}}}}, "group_size"),
    ({"format": "made-up", "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4}}}}, "format"),
    ({"ignore": "lm_head"}, "ignore"),
])
def test_malformed_ct_configs_name_the_field(change: dict, reason: str) -> None:
    with pytest.raises(QuantConfigInvalid, match=reason):
        parse_ct(Format("w4a16").config() | change, "config.json quantization_config")


@pytest.mark.parametrize("quant,fmt,bits,companions", [
    ("w4a16", "pack-quantized", 4, {"weight_packed", "weight_scale", "weight_shape"}),
    ("w4a16-asym", "pack-quantized", 4, {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}),
    ("w8a16", "pack-quantized", 8, {"weight_packed", "weight_scale", "weight_shape"}),
    ("nvfp4", "nvfp4-pack-quantized", 4, {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"}),
    ("modelopt-nvfp4", "modelopt-nvfp4", 4, {"weight", "weight_scale", "weight_scale_2", "input_scale"}),
])
def test_stored_weights_are_recognised_with_their_companions(tmp_path: Path, quant: str, fmt: str, bits: int,
                                                             companions: set[str]) -> None:
    from mtpforge.testing.factory import make_checkpoint

    ckpt = open_checkpoint(make_checkpoint(tmp_path / quant, quant=quant))
    w = ckpt.stored[f"{LAYER}.mlp.down_proj.weight"]
    assert (w.format, w.bits, w.shape) == (fmt, bits, (64, 128))
    assert set(w.parts) == companions and not w.missing and not w.problems
    assert not any(n.endswith(("weight_scale", "weight_packed")) for n in ckpt.stored)  # companions never stand alone

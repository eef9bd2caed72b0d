"""The DeepSeek, GLM and MiMo families against the public checkpoints they describe.

Fixture sources (each config is the published file, verbatim unless said):
- DeepSeek-V3, DeepSeek-R1, nvidia/DeepSeek-V3.1-NVFP4, zai-org/GLM-5, XiaomiMiMo/MiMo-7B-Base: the `config.json`
  files in /work/shared/reference/public-configs/ (ai-dynamo/aiconfigurator `model_configs/`, see SOURCE.md there).
- DeepSeek-R1's tensor inventory (91,991 tensors in 163 shards; `model.layers.61.{eh_proj, embed_tokens, enorm,
  hnorm, shared_head.head, shared_head.norm}`; F32 `weight_scale_inv` beside every FP8 linear; BF16 `eh_proj`,
  routers, norms and embeddings): a public model report of deepseek-ai/DeepSeek-R1 (found with the search tool,
  find_string "model.layers.61.shared_head.head.weight").
- GLM-5's MTP layer `model.layers.78` (no `embed_tokens`, no `shared_head.head`; the DSA indexer's `wq_b`, `wk`,
  `k_norm.{weight,bias}`, `weights_proj`): `CHECKPOINT_LAYER78_SUBKEYS` of a public test built from the
  zai-org/GLM-5 index (find_string "self_attn.indexer.k_norm.bias").
- GLM-4.5-Air's `config.json` (`glm4_moe`, 46 layers, 128 experts, `attention_bias: true`, `use_qk_norm: false`,
  `first_k_dense_replace: 1`): as printed by an ms-swift training log of zai-org/GLM-4.5-Air (find_string
  '"model_type": "glm4_moe"'); copied below with the fields the family reads.
- DeepSeek-V3.2-Exp's `config.json` (`deepseek_v32`: V3 plus `index_n_heads: 64`, `index_head_dim: 128`,
  `index_topk: 2048`): the abridged fixture of a public Rust test (find_string '"model_type": "deepseek_v32"'), with
  the 61 layers and MTP depth 1 of the published V3 family.
- GLM-4.5's (355B; GLM-4.6 / 4.7 share the architecture) `config.json` (92 layers, 160 experts, `use_qk_norm: true`,
  `first_k_dense_replace: 3`): the GLM45Bridge test fixture of NVIDIA's Megatron-Bridge, which copies zai-org/GLM-4.5's
  fields (find_string '"num_hidden_layers": 92'); its `model_type` is the real `glm4_moe` here, and the MTP depth 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.diagnosis.doctor import doctor
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.families import FAMILIES, MTP, TRUNK, detect_family, expected_inventory
from mtpforge.families.base import LINEAR, NORM
from mtpforge.testing.factory import tiny_config
from mtpforge.testing.replica import make_family_replica

PUBLIC = Path("/work/shared/reference/public-configs")

GLM45_AIR = {  # zai-org/GLM-4.5-Air config.json (ms-swift log, see the module docstring)
    "architectures": ["Glm4MoeForCausalLM"], "attention_bias": True, "first_k_dense_replace": 1, "head_dim": 128,
    "hidden_size": 4096, "intermediate_size": 10944, "max_position_embeddings": 131072, "model_type": "glm4_moe",
    "moe_intermediate_size": 1408, "n_group": 1, "n_routed_experts": 128, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 96, "num_experts_per_tok": 8, "num_hidden_layers": 46, "num_key_value_heads": 8,
    "num_nextn_predict_layers": 1, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-05, "rope_theta": 1000000,
    "routed_scaling_factor": 1.0, "tie_word_embeddings": False, "topk_group": 1, "torch_dtype": "bfloat16",
    "use_qk_norm": False, "vocab_size": 151552,
}
GLM45 = {  # zai-org/GLM-4.5 config.json (Megatron-Bridge fixture, see the module docstring)
    "architectures": ["Glm4MoeForCausalLM"], "attention_bias": True, "first_k_dense_replace": 3, "head_dim": 128,
    "hidden_size": 5120, "intermediate_size": 12288, "max_position_embeddings": 131072, "model_type": "glm4_moe",
    "moe_intermediate_size": 1536, "n_routed_experts": 160, "n_shared_experts": 1, "num_attention_heads": 96,
    "num_experts_per_tok": 8, "num_hidden_layers": 92, "num_key_value_heads": 8, "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "routed_scaling_factor": 2.5,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_qk_norm": True, "vocab_size": 151552,
}
DEEPSEEK_V32 = {  # deepseek-ai/DeepSeek-V3.2-Exp config.json fields (see the module docstring)
    "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
    "norm_topk_prob": True, "routed_scaling_factor": 2.5, "index_topk": 2048, "index_n_heads": 64, "index_head_dim": 128,
    "vocab_size": 129280, "torch_dtype": "bfloat16", "num_nextn_predict_layers": 1, "max_position_embeddings": 163840,
}
# GLM-5's `model.layers.78` as its index lists it (experts 1..255 left out, as in the source).
GLM5_LAYER78 = [
    "eh_proj.weight", "enorm.weight", "hnorm.weight", "input_layernorm.weight", "mlp.experts.0.down_proj.weight",
    "mlp.experts.0.gate_proj.weight", "mlp.experts.0.up_proj.weight", "mlp.gate.e_score_correction_bias", "mlp.gate.weight",
    "mlp.shared_experts.down_proj.weight", "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
    "post_attention_layernorm.weight", "self_attn.indexer.k_norm.bias", "self_attn.indexer.k_norm.weight",
    "self_attn.indexer.weights_proj.weight", "self_attn.indexer.wk.weight", "self_attn.indexer.wq_b.weight",
    "self_attn.kv_a_layernorm.weight", "self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_b_proj.weight",
    "self_attn.o_proj.weight", "self_attn.q_a_layernorm.weight", "self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight",
    "shared_head.norm.weight",
]


def public(name: str) -> dict[str, Any]:
    return json.loads((PUBLIC / name / "config.json").read_text())


CONFIGS = {
    "deepseek-v3": lambda: public("deepseek-ai--DeepSeek-V3"),
    "deepseek-r1": lambda: public("deepseek-ai--DeepSeek-R1"),
    "deepseek-v3.1-nvfp4": lambda: public("nvidia--DeepSeek-V3.1-NVFP4"),
    "deepseek-v3.2-exp": lambda: dict(DEEPSEEK_V32),
    "glm-5": lambda: public("zai-org--GLM-5"),
    "glm-5-nvfp4": lambda: public("nvidia--GLM-5-NVFP4"),
    "glm-4.5-air": lambda: dict(GLM45_AIR),
    "glm-4.5": lambda: dict(GLM45),
    "mimo-7b": lambda: public("XiaomiMiMo--MiMo-7B-Base"),
}


def test_deepseek_r1_inventory_is_the_published_one() -> None:
    config = public("deepseek-ai--DeepSeek-R1")
    family = detect_family(config)
    inv = family.expected(config, fused_experts=False)
    # One F32 weight_scale_inv beside each FP8 linear: every linear but eh_proj, routers, embeddings and lm_heads.
    fp8 = [s for s in inv.values() if s.kind == LINEAR and not s.keep_high_precision and s.block != "mtp_fc"
           and s.group in (TRUNK, MTP) and not s.name.endswith(("shared_head.head.weight", "lm_head.weight"))]
    assert len(inv) + len(fp8) == 91_991
    scales = sum(-(-s.shape[0] // 128) * -(-s.shape[1] // 128) for s in fp8)  # 128 x 128 blocks (weight_block_size)
    assert sum(s.numel for s in inv.values()) + scales == 684_531_386_000  # the report's parameter count
    p = "model.layers.61"
    assert family.mtp_prefix == p and family.group_of(f"{p}.mlp.experts.255.up_proj.weight") == MTP
    assert family.group_of("model.layers.60.mlp.experts.0.up_proj.weight") == TRUNK
    shapes = {f"{p}.eh_proj.weight": (7168, 14336), f"{p}.embed_tokens.weight": (129280, 7168),
              f"{p}.shared_head.head.weight": (129280, 7168), f"{p}.self_attn.kv_a_proj_with_mqa.weight": (576, 7168),
              f"{p}.self_attn.q_b_proj.weight": (24576, 1536), f"{p}.self_attn.kv_b_proj.weight": (32768, 512),
              f"{p}.self_attn.o_proj.weight": (7168, 16384), f"{p}.mlp.experts.255.down_proj.weight": (7168, 2048),
              "model.layers.2.mlp.down_proj.weight": (7168, 18432), "model.layers.3.mlp.gate.e_score_correction_bias": (256,)}
    assert {n: inv[n].shape for n in shapes} == shapes
    assert inv["model.layers.3.mlp.gate.e_score_correction_bias"].dtype == "F32"
    # DeepSeek's RMSNorm multiplies by w (vLLM RMSNorm), unlike Qwen3.5's 1 + w: no norm carries the offset.
    assert not any(s.norm_offset for s in inv.values() if s.kind == NORM)


def test_glm45_head_sits_after_92_layers_with_qk_norms_and_biases() -> None:
    family = detect_family(GLM45)
    inv = family.expected(GLM45, fused_experts=False)
    p = "model.layers.92"
    assert family.mtp_prefix == p and family.mtp_layer_index(f"{p}.eh_proj.weight") == 0
    shapes = {f"{p}.self_attn.q_proj.weight": (96 * 128, 5120), f"{p}.self_attn.q_proj.bias": (96 * 128,),
              f"{p}.self_attn.k_proj.weight": (8 * 128, 5120), f"{p}.self_attn.q_norm.weight": (128,),
              f"{p}.self_attn.o_proj.weight": (5120, 96 * 128), f"{p}.mlp.experts.159.down_proj.weight": (5120, 1536),
              f"{p}.mlp.shared_experts.up_proj.weight": (1536, 5120), "model.layers.2.mlp.up_proj.weight": (12288, 5120),
              "model.layers.3.mlp.gate.weight": (160, 5120), "model.layers.3.mlp.gate.e_score_correction_bias": (160,)}
    assert {n: inv[n].shape for n in shapes} == shapes
    assert "model.layers.2.mlp.gate.weight" not in inv  # first_k_dense_replace: 3 dense layers
    # zai-org's model card: "355 billion total parameters"
    assert sum(s.numel for s in inv.values() if s.group != MTP) == pytest.approx(355e9, rel=0.01)


def test_glm5_mtp_layer_is_the_published_one() -> None:
    config = public("zai-org--GLM-5")
    family = detect_family(config)
    stored = [f"model.layers.78.{k}" for k in GLM5_LAYER78]
    inv = expected_inventory(family, config, stored)
    head = {n[len("model.layers.78."):] for n, s in inv.items() if s.group == MTP and ".experts." not in n}
    assert head == {k for k in GLM5_LAYER78 if ".experts." not in k}  # no embed_tokens / shared_head.head expected
    assert inv["model.layers.78.self_attn.indexer.wq_b.weight"].shape == (32 * 128, 2048)
    assert inv["model.layers.78.self_attn.kv_b_proj.weight"].shape == (64 * (192 + 256), 512)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_healthy_hollow_replica_is_healthy(tmp_path: Path, name: str) -> None:
    ckpt = make_family_replica(tmp_path / name, CONFIGS[name]())
    report = doctor(ckpt)
    assert report.ok and [f.code for f in report.findings] == [], [f.message for f in report.findings]
    summary = inspect_checkpoint(ckpt)
    assert summary.mtp.present and summary.mtp.tensors == summary.mtp.expected_tensors > 10
    assert summary.mtp.declared_layers == 1 and summary.mtp.config_key == "num_nextn_predict_layers"


@pytest.mark.slow
def test_a_full_size_deepseek_v3_replica_is_healthy(tmp_path: Path) -> None:
    """All 61 layers and 256 experts: 46,183 tensors in 163 shards, as the published checkpoint (less its FP8 scales)."""
    ckpt = make_family_replica(tmp_path / "v3", public("deepseek-ai--DeepSeek-V3"), layers=61, shards=163)
    report = doctor(ckpt)
    assert report.ok and report.findings == ()
    assert inspect_checkpoint(ckpt).parameters == 684_489_845_504


@pytest.mark.parametrize("name", ["deepseek-r1", "glm-5", "glm-4.5-air"])
def test_tied_copies_may_be_absent(tmp_path: Path, name: str) -> None:
    ckpt = make_family_replica(tmp_path / name, CONFIGS[name](), tied_copies=False)
    assert doctor(ckpt).ok


@pytest.mark.parametrize("name,prefix", [("deepseek-r1", "model.layers.4."), ("glm-5", "model.layers.4."),
                                         ("glm-4.5-air", "model.layers.4."), ("mimo-7b", "model.mtp_layers.0.")])
def test_a_dropped_head_is_mtp_missing(tmp_path: Path, name: str, prefix: str) -> None:
    ckpt = make_family_replica(tmp_path / name, CONFIGS[name](), drop=lambda n: n.startswith(prefix))
    codes = [f.code for f in doctor(ckpt).findings]
    assert codes == ["mtp-missing"]


def test_a_dropped_head_tensor_is_named(tmp_path: Path) -> None:
    gone = "model.layers.4.shared_head.norm.weight"
    ckpt = make_family_replica(tmp_path / "r1", CONFIGS["deepseek-r1"](), drop=lambda n: n == gone)
    [finding] = doctor(ckpt).findings
    assert finding.code == "mtp-incomplete" and list(finding.tensors) == [gone]


def _head_in_own_shard(root: Path, config: dict[str, Any], *, indexed: bool) -> Path:
    """GLM-4.7's layout: the MTP layer in a standalone `mtp.safetensors`, listed in the index or not."""
    prefix = "model.layers.4."
    ckpt = make_family_replica(root, config, drop=lambda n: n.startswith(prefix))
    family = detect_family(json.loads((ckpt / "config.json").read_text()))
    head = [TensorData(n, s.dtype, s.shape) for n, s in family.expected(json.loads((ckpt / "config.json").read_text()),
                                                                       fused_experts=False).items()
            if n.startswith(prefix) and not s.optional]
    write_safetensors(ckpt / "mtp.safetensors", head, {"format": "pt"})
    if indexed:
        index = json.loads((ckpt / "model.safetensors.index.json").read_text())
        index["weight_map"].update({t.name: "mtp.safetensors" for t in head})
        index["metadata"]["total_size"] += sum(t.nbytes for t in head)
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return ckpt


def test_a_standalone_indexed_mtp_shard_is_healthy_and_an_unindexed_one_is_named_and_fixed(tmp_path: Path) -> None:
    """GLM-4.7's NVFP4 export put layer 92 in `mtp.safetensors` but left it out of the index (sgl-project/sglang#17166:
    SGLang warns and remaps it; vLLM loads only the files the index names)."""
    from mtpforge.surgery.fix import fix

    assert doctor(_head_in_own_shard(tmp_path / "ok", dict(GLM45_AIR), indexed=True)).ok
    bad = _head_in_own_shard(tmp_path / "bad", dict(GLM45_AIR), indexed=False)
    unindexed = [f for f in doctor(bad).findings if f.code == "mtp-unindexed"]
    assert [list(f.files) for f in unindexed] == [["mtp.safetensors"]]
    fix(bad, str(tmp_path / "fixed"))
    assert doctor(tmp_path / "fixed").findings == ()


def test_an_unknown_family_is_refused_before_any_shard_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mtpforge.checkpoint import checkpoint as opening
    from mtpforge.cli import main

    ckpt = make_family_replica(tmp_path / "x", dict(GLM45_AIR))
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "llama4", "architectures": ["Llama4ForCausalLM"]}))

    def no_header(*args: Any) -> Any:
        raise AssertionError("a shard header was read before the family was known")

    monkeypatch.setattr(opening, "read_header", no_header)
    for verb in ("doctor", "inspect"):
        with pytest.raises(SystemExit) as exit_:
            main([verb, str(ckpt), "--json"])
        assert exit_.value.code == 3
        out, err = capsys.readouterr()
        doc = json.loads(out)
        assert doc["schema"] == "mtpforge.error/1" and doc["exit_code"] == 3 and "'llama4'" in doc["message"]
        assert "Llama4ForCausalLM" in err and "docs/families.md" in err


def test_text_only_moe_keeping_the_wrapper_names_is_healthy(tmp_path: Path) -> None:
    """vLLM's text-only Qwen3.5 class maps `model.language_model.` to `model.` (qwen3_5.py hf_to_vllm_mapper)."""
    config = tiny_config("qwen3_5_moe", text_only_arch=True)
    family = detect_family(config)
    inv = family.expected(config, prefix="model.language_model")
    root = tmp_path / "ckpt"
    root.mkdir()
    write_safetensors(root / "model.safetensors", [TensorData(n, s.dtype, s.shape) for n, s in inv.items()], {"format": "pt"})
    (root / "config.json").write_text(json.dumps(config))
    report = doctor(root)
    assert not [f for f in report.findings if f.code.startswith(("tensor-", "mtp-"))], [f.message for f in report.findings]
    # the wrapper class has no such mapping: there the names must be the wrapper's
    assert FAMILIES["qwen3_5_moe"].trunk_prefixes(tiny_config("qwen3_5_moe")) == ("model.language_model",)


def test_fused_mtp_experts_beside_a_per_expert_trunk_are_read_per_part(tmp_path: Path) -> None:
    config = tiny_config("qwen3_5_moe", text_only_arch=True)
    family = detect_family(config)
    inv = family.expected(config, fused_experts=False, mtp_fused_experts=True)
    assert "mtp.layers.0.mlp.experts.gate_up_proj" in inv and "model.layers.0.mlp.experts.0.up_proj.weight" in inv
    assert expected_inventory(family, config, inv).keys() == inv.keys()
    # and the other way round
    inv = family.expected(config, fused_experts=True, mtp_fused_experts=False)
    assert expected_inventory(family, config, inv).keys() == inv.keys()


# --- graft, strip, plan and serve for the NextN families ---------------------------------------------------------

def shrunk(config: dict[str, Any]) -> dict[str, Any]:
    """A public config with its widths divided down (names, layout and every other field as published),
    so that a graft can copy real bytes in a test: hidden 7168 -> 64, 256 experts -> 8, ..."""
    small = {"hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32, "vocab_size": 128,
             "n_routed_experts": 8, "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
             "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
             "index_n_heads": 2, "index_head_dim": 128, "head_dim": 16, "n_group": 1, "topk_group": 1}
    return {**config, **{k: v for k, v in small.items() if k in config}}


@pytest.mark.parametrize("name", ["deepseek-r1", "glm-5", "glm-4.5-air"])
def test_graft_restores_a_dropped_nextn_head(tmp_path: Path, name: str) -> None:
    from mtpforge.surgery.graft import graft

    config = shrunk(CONFIGS[name]())
    donor = make_family_replica(tmp_path / "base", config)
    target = make_family_replica(tmp_path / "finetune", config, drop=lambda n: n.startswith("model.layers.4."))
    assert [f.code for f in doctor(target).findings] == ["mtp-missing"]
    graft(target, str(donor), str(tmp_path / "out"))
    assert doctor(tmp_path / "out").findings == ()
    out, base = inspect_checkpoint(tmp_path / "out"), inspect_checkpoint(donor)
    assert out.mtp.tensors == base.mtp.tensors and out.mtp.bytes == base.mtp.bytes


def test_graft_across_a_pruned_moe_names_the_tensor_and_both_counts(tmp_path: Path) -> None:
    """A REAP-pruned GLM-5 keeps fewer routed experts (0xSero/glm-5.2-reap-504B-v2 declares 168 of 256)."""
    from mtpforge.surgery.graft import GraftError, open_donor, plan_graft

    config = public("zai-org--GLM-5")
    donor = make_family_replica(tmp_path / "base", config)
    pruned = make_family_replica(tmp_path / "reap", {**config, "n_routed_experts": 168},
                                 drop=lambda n: n.startswith("model.layers.4."))
    with pytest.raises(GraftError) as err:
        plan_graft(pruned, open_donor(str(donor)))
    message = str(err.value)
    assert "model.layers.4.mlp.gate.weight holds 256 routed experts but the target has 168 (n_routed_experts" in message
    assert "pruned" in (err.value.hint or "")


def test_strip_says_a_text_only_family_has_nothing_to_strip(tmp_path: Path) -> None:
    from mtpforge.surgery.strip import StripError, plan_strip

    with pytest.raises(StripError, match=r"deepseek_v3 \(DeepseekV3ForCausalLM\) has no vision tower"):
        plan_strip(make_family_replica(tmp_path / "r1", CONFIGS["deepseek-r1"]()))


@pytest.mark.parametrize("name,per_token,block", [
    ("deepseek-v3", (512 + 64) * 2, 64),  # MLA latent kv_lora_rank + qk_rope_head_dim, BF16, FlashMLA pages of 64
    ("glm-5", (512 + 64) * 2 + 128 + 4, 64),  # + the DSA indexer's FP8 key cache (128 values, one F32 scale)
    ("deepseek-v3.2-exp", (512 + 64) * 2 + 128 + 4, 64),  # "roughly 132 B per token per layer" for the indexer
    ("glm-4.5-air", 2 * 8 * 128 * 2, 16),  # GQA: K and V of 8 KV heads x 128
    ("mimo-7b", 2 * 8 * 128 * 2, 16),
])
def test_plan_and_serve_an_attention_only_family(tmp_path: Path, name: str, per_token: int, block: int) -> None:
    from mtpforge.engine.launch import ServeOptions, launch_line
    from mtpforge.engine.memory import PlanRequest, plan
    from mtpforge.units import GIB

    ckpt = make_family_replica(tmp_path / name, CONFIGS[name]())
    m = plan(ckpt, PlanRequest(gpu_memory=141 * GIB, kv_dtype="bfloat16", max_model_len=32768))
    assert (m.kv_bytes_per_token_per_layer, m.block_size, m.gdn_layers) == (per_token, block, 0)
    assert m.attention_layers == 4 + 1  # the trunk's layers and the MTP layer (drafting with k = 3)
    assert m.num_blocks == (m.kv_pool // (per_token * block * 5)) and m.ok
    assert json.loads(launch_line(ckpt, ServeOptions()).args[-1]) == {"method": "mtp", "num_speculative_tokens": 3}
    legacy = {"deepseek-v3": "deepseek_mtp", "glm-5": "deepseek_mtp", "deepseek-v3.2-exp": "deepseek_mtp",
              "glm-4.5-air": "glm4_moe_mtp", "mimo-7b": "mimo_mtp"}
    assert json.loads(launch_line(ckpt, ServeOptions(engine_version="0.10.1")).args[-1])["method"] == legacy[name]


def _fp8_block_replica(root: Path, config: dict[str, Any]) -> Path:
    """DeepSeek-R1's own storage (its published inventory): every linear vLLM quantizes is F8_E4M3 with an F32
    `weight_scale_inv` per 128 x 128 block; `eh_proj`, routers, norms, embeddings and lm_heads stay BF16."""
    from mtpforge.testing.factory import write_shards, write_tokenizer_files
    from mtpforge.testing.replica import scaled_config

    config = scaled_config(config, layers=4)
    tensors = []
    for name, spec in detect_family(config).expected(config, fused_experts=False).items():
        if spec.kind == LINEAR and not spec.keep_high_precision and not name.endswith("lm_head.weight"):
            blocks = tuple(-(-d // 128) for d in spec.shape)
            tensors += [TensorData(name, "F8_E4M3", spec.shape), TensorData(f"{name}_scale_inv", "F32", blocks)]
        else:
            tensors.append(TensorData(name, spec.dtype, spec.shape))
    root.mkdir()
    write_shards(root, tensors, shards=3, index=True)
    (root / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(root, vocab_size=16)
    return root


def test_deepseek_r1_fp8_storage_has_no_error(tmp_path: Path) -> None:
    """eh_proj is a plain nn.Linear in vLLM's DeepSeekMTP and shared_head.head an lm_head: stored BF16 under an FP8
    quantization_config they are not 'uncovered'."""
    report = doctor(_fp8_block_replica(tmp_path / "r1", public("deepseek-ai--DeepSeek-R1")))
    assert report.ok, [f.message for f in report.findings]
    assert "mtp-quant-uncovered" not in {f.code for f in report.findings}


def _nvfp4_export(tmp_path: Path, name: str) -> Path:
    """The published config (all 61 / 78 layers, widths shrunk) and the verbatim hf_quant_config.json: every linear
    that `exclude_modules` leaves in scope stored in modelopt's NVFP4 layout, the rest (attention of the listed
    layers, the whole MTP layer `model.layers.61*` / `model.layers.78*`, lm_head) and the routers BF16."""
    import fnmatch

    from mtpforge.formats.schemes import SCHEMES
    from mtpforge.testing.factory import write_shards, write_tokenizer_files

    config = shrunk(public(name))
    hf_quant = json.loads((PUBLIC / name / "hf_quant_config.json").read_text())
    exclude = hf_quant["quantization"]["exclude_modules"]
    scheme = SCHEMES["modelopt-nvfp4"]
    tensors = []
    for weight, spec in detect_family(config).expected(config, fused_experts=False).items():
        if spec.kind == LINEAR and not spec.keep_high_precision and not any(fnmatch.fnmatchcase(spec.module, p) for p in exclude):
            tensors += [TensorData(f"{spec.module}.{key}", dtype, tuple(dims))
                        for key, (dtype, dims) in scheme.companions(*spec.shape, 16).items()]
        else:
            tensors.append(TensorData(weight, spec.dtype, spec.shape))
    root = tmp_path / name
    root.mkdir()
    write_shards(root, tensors, shards=4, index=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "hf_quant_config.json").write_text(json.dumps(hf_quant))
    write_tokenizer_files(root, vocab_size=16)
    return root


@pytest.mark.parametrize("name", ["nvidia--DeepSeek-V3.1-NVFP4", "nvidia--GLM-5-NVFP4"])
def test_nvidias_nvfp4_exports_are_healthy(tmp_path: Path, name: str) -> None:
    root = _nvfp4_export(tmp_path, name)
    report = doctor(root)
    assert report.findings == (), [f.message for f in report.findings]
    summary = inspect_checkpoint(root)
    assert summary.mtp.quantized == 0 and summary.mtp.present


def test_an_nvfp4_export_that_lost_its_mtp_exclusion_is_named_and_fixed(tmp_path: Path) -> None:
    """Model-Optimizer #750's defect on DeepSeek: the BF16 MTP layer no longer excluded, so the engine would read it
    as NVFP4. doctor names the layer's weights; --fix writes `model.layers.61*` back and the result is healthy."""
    from mtpforge.surgery.fix import fix

    root = _nvfp4_export(tmp_path, "nvidia--DeepSeek-V3.1-NVFP4")
    hf_quant = json.loads((root / "hf_quant_config.json").read_text())
    hf_quant["quantization"]["exclude_modules"].remove("model.layers.61*")
    (root / "hf_quant_config.json").write_text(json.dumps(hf_quant))
    [finding] = [f for f in doctor(root).findings if f.severity == "error"]
    assert finding.code == "mtp-quant-uncovered" and "model.layers.61.mlp.experts.0.up_proj.weight" in finding.tensors
    fix(root, str(tmp_path / "fixed"))
    assert doctor(tmp_path / "fixed").findings == ()
    fixed = json.loads((tmp_path / "fixed" / "hf_quant_config.json").read_text())
    assert "model.layers.61*" in fixed["quantization"]["exclude_modules"]


@pytest.mark.parametrize("name", ["deepseek-v3", "glm-4.5-air", "mimo-7b"])
def test_an_undeclared_head_at_the_familys_own_path_is_declared_by_fix(tmp_path: Path, name: str) -> None:
    """A re-export that dropped `num_nextn_predict_layers` (HF's DeepseekV3Config has no such field, so a
    `save_pretrained` round trip loses it) while the head still sits at `model.layers.{num_hidden_layers}` /
    `model.mtp_layers.0`: --fix must count the layers where the family puts them, not under `mtp.layers`."""
    from mtpforge.surgery.fix import fix

    root = make_family_replica(tmp_path / name, CONFIGS[name]())
    config = json.loads((root / "config.json").read_text())
    del config["num_nextn_predict_layers"]
    (root / "config.json").write_text(json.dumps(config))
    [finding] = doctor(root).findings
    head = detect_family(config).mtp_prefix
    assert finding.code == "mtp-undeclared" and all(t.startswith(head + ".") for t in finding.tensors)
    assert head in finding.message and "mtp.*" not in finding.message
    result = fix(root, str(tmp_path / "fixed"))
    assert result.after is not None and result.after.ok and result.after.findings == ()
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["num_nextn_predict_layers"] == 1


def test_plan_for_sglang_an_attention_only_family(tmp_path: Path, cli: Any) -> None:
    from mtpforge.engine.memory import PlanRequest, plan
    from mtpforge.units import GIB

    ckpt = make_family_replica(tmp_path / "glm5", CONFIGS["glm-5"]())
    m = plan(ckpt, PlanRequest(gpu_memory=141 * GIB, kv_dtype="bfloat16", max_model_len=32768, engine="sglang"))
    assert (m.block_size, m.gdn_layers, m.gdn_state_slots, m.engine) == (1, 0, 0, "sglang")
    assert m.kv_tokens == m.kv_pool // (1284 * 5) and m.ok
    r = cli("plan", str(ckpt), "--gpu-memory", "141GiB", "--engine", "sglang")
    assert r.code == 0 and "KV pages            1 token each" in r.out


def test_verify_says_the_reference_does_not_run_a_nextn_family(tmp_path: Path, cli: Any) -> None:
    ckpt = make_family_replica(tmp_path / "glm5", CONFIGS["glm-5"]())
    r = cli("verify", str(ckpt), "--reference", str(ckpt), "--json")
    assert r.code == 3 and "Traceback" not in r.err
    assert r.json()["message"] == "the reference runtime does not run glm_moe_dsa (it runs qwen3_5, qwen3_5_moe, qwen3_next)"


def test_quantize_a_nextn_family_keeps_its_head_and_passes_doctor(tmp_path: Path, cli: Any) -> None:
    base = make_family_replica(tmp_path / "glm5", shrunk(CONFIGS["glm-5"]()))
    r = cli("quantize", str(base), "--out", str(tmp_path / "w4"), "--scheme", "w4a16", "--group-size", "16", "--json")
    assert r.code == 0, r.err
    assert doctor(tmp_path / "w4").findings == ()
    summary = inspect_checkpoint(tmp_path / "w4")
    assert summary.mtp.quantized == 0 and summary.mtp.tensors == summary.mtp.expected_tensors
    ignore = json.loads((tmp_path / "w4" / "config.json").read_text())["quantization_config"]["ignore"]
    assert "re:^model.layers.4.*" in ignore  # the MTP layer after the 4 trunk layers, excluded as one pattern

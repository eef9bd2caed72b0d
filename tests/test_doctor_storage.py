"""Doctor's storage findings (quantization, vision, files and index), each from a checkpoint built broken on
purpose; test_doctor.py holds the healthy checkpoints, the MTP findings and the catalogue check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.formats.values import decode, encode
from mtpforge.testing.factory import default_scope

from .conftest import codes, edit_json, rewrite_shard, shard_of
from .test_doctor import drop_tensors, report, set_config

Make = Callable[..., Path]
MTP_DOWN = "mtp.layers.0.mlp.down_proj.weight"
FULL = "model.language_model.layers.3"


# ---- quantization ------------------------------------------------------------

def test_fused_group_mixed(make: Make) -> None:
    k_proj = f"{FULL}.self_attn.k_proj"
    ckpt = make(quant="w4a16", scope=lambda s: default_scope(s) and s.module != k_proj)
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].append(k_proj))
    r = report(ckpt)
    assert codes(r) == {"fused-group-mixed"} and r["findings"][0]["tensors"] == [f"{FULL}.self_attn.qkv_proj"]


def test_gdn_small_projections_quantized(make: Make) -> None:
    ckpt = make(quant="w8a16", scope=lambda s: default_scope(s) or s.small_proj)
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].remove("re:.*linear_attn.in_proj_(a|b|ba)$"))
    r = report(ckpt)
    assert codes(r) == {"gdn-small-proj-quantized"} and len(r["findings"][0]["tensors"]) == 6


def test_high_precision_tensors_quantized(make: Make) -> None:
    ckpt = make(family="qwen3_5_moe", quant="w4a16", scope=lambda s: default_scope(s) or s.name.endswith("mlp.gate.weight"))
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].remove("re:.*mlp.gate$"))
    r = report(ckpt)
    assert "high-precision-quantized" in codes(r)
    routers = next(f for f in r["findings"] if f["code"] == "high-precision-quantized")["tensors"]
    assert all(n.endswith("mlp.gate.weight") for n in routers) and len(routers) == 5

    a_log = "model.language_model.layers.0.linear_attn.A_log"
    ckpt2 = make("int8-alog")
    rewrite_shard(shard_of(ckpt2, a_log), lambda ts: [
        TensorData(t.name, "I8", t.shape, bytes(len(t.data) // 2)) if t.name == a_log else t for t in ts])
    assert "high-precision-quantized" in codes(report(ckpt2))


def test_quant_declared_mismatch_when_config_and_storage_disagree(make: Make) -> None:
    ckpt = make(quant="w4a16")
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].append("re:.*mlp.down_proj$"))
    r = report(ckpt)
    assert codes(r) == {"quant-declared-mismatch"} and len(r["findings"][0]["tensors"]) == 4

    # a GDN projection stored BF16 while the config's "Linear" target would quantize it
    plain = make("gdn-bf16", quant="w4a16", scope=lambda s: default_scope(s) and "linear_attn" not in s.name)
    assert codes(report(plain)) == {"quant-declared-mismatch"}


@pytest.mark.parametrize("breakage", ["bad-bits", "unknown-method", "bad-regex", "broken-hf-quant-config", "no-config"])
def test_quant_config_invalid(make: Make, breakage: str) -> None:
    ckpt = make(quant="modelopt-nvfp4" if breakage == "broken-hf-quant-config" else "w4a16")
    if breakage == "bad-bits":
        set_config(ckpt, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits=9))
    elif breakage == "unknown-method":
        set_config(ckpt, lambda c: c["quantization_config"].update(quant_method="magic"))
    elif breakage == "bad-regex":
        set_config(ckpt, lambda c: c["quantization_config"]["ignore"].append("re:(unclosed"))
    elif breakage == "broken-hf-quant-config":
        (ckpt / "hf_quant_config.json").write_text("{not json")
    else:
        set_config(ckpt, lambda c: c.pop("quantization_config"))
    assert "quant-config-invalid" in codes(report(ckpt))


def test_foreign_quant_method_is_reported_not_misjudged(make: Make) -> None:
    ckpt = make()
    # gptq, awq, auto-round, quark, fp8 and MLX are analysed (tests/test_formats_real.py); bitsandbytes is not
    set_config(ckpt, lambda c: c.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}))
    r = report(ckpt)
    assert codes(r) == {"quant-method-unsupported"} and r["ok"]


# ---- vision ------------------------------------------------------------------

def test_vision_missing_undeclared(make: Make) -> None:
    ckpt = make(vision=False)
    set_config(ckpt, lambda c: c.update(language_model_only=False))
    assert codes(report(ckpt)) == {"vision-missing-undeclared"}


def test_vision_present_in_a_text_only_build_is_info(make: Make) -> None:
    ckpt = make()
    set_config(ckpt, lambda c: c.update(language_model_only=True))
    r = report(ckpt)
    assert codes(r) == {"vision-present-text-only"} and r["findings"][0]["severity"] == "info"


# ---- files and index ---------------------------------------------------------

def test_index_missing_shard(make: Make) -> None:
    ckpt = make(shards=3)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    r = report(ckpt)
    assert "index-missing-shard" in codes(r)
    assert next(f for f in r["findings"] if f["code"] == "index-missing-shard")["files"] == ["model-00002-of-00003.safetensors"]


def test_index_missing_tensor_and_total_size(make: Make) -> None:
    ckpt = make(shards=2)
    edit_json(ckpt / INDEX_NAME, lambda d: d["weight_map"].update({"lm_head.weight": "model-00001-of-00002.safetensors"}))
    assert "index-missing-tensor" in codes(report(ckpt))

    ckpt2 = make("size", shards=2)
    edit_json(ckpt2 / INDEX_NAME, lambda d: d["metadata"].update(total_size=d["metadata"]["total_size"] + 4096))
    assert codes(report(ckpt2)) == {"index-total-size"}


def test_shard_orphan(make: Make) -> None:
    ckpt = make(shards=2)
    write_safetensors(ckpt / "stale.safetensors", [TensorData("something.weight", "BF16", (2, 2), bytes(8))])
    r = report(ckpt)
    assert codes(r) == {"shard-orphan"} and r["findings"][0]["files"] == ["stale.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_is_a_finding_not_a_traceback(make: Make, damage: str) -> None:
    ckpt = make(shards=2)
    shard = ckpt / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}[damage])
    r = report(ckpt)
    assert "header-invalid" in codes(r) and not r["ok"]


def test_tensor_shape_dtype_missing_and_unexpected(make: Make) -> None:
    o_proj = f"{FULL}.self_attn.o_proj.weight"
    ckpt = make()
    rewrite_shard(shard_of(ckpt, o_proj), lambda ts: [
        TensorData(t.name, t.dtype, (t.shape[0], t.shape[1] // 2), t.data[: len(t.data) // 2]) if t.name == o_proj else t
        for t in ts])
    r = report(ckpt)
    assert codes(r) == {"tensor-shape-mismatch"} and "expected [64, 64]" in r["findings"][0]["message"]

    cast = make("f16", shards=2)  # a float stored in another float dtype: the engine casts it (a note, exit 0)
    rewrite_shard(shard_of(cast, o_proj), lambda ts: [
        TensorData(t.name, "F16", t.shape, t.data) if t.name == o_proj else t for t in ts])
    r = report(cast)
    assert codes(r) == {"dtype-cast"} and r["ok"] and "stored F16 where config.json says BF16" in r["findings"][0]["message"]

    ckpt2 = make("missing", shards=2)
    drop_tensors(ckpt2, {"lm_head.weight"})
    assert codes(report(ckpt2)) == {"tensor-missing"}

    ckpt3 = make("extra")
    rewrite_shard(ckpt3 / "model.safetensors",
                  lambda ts: [*ts, TensorData("model.language_model.layers.9.mlp.up_proj.weight", "BF16", (2, 2), bytes(8))])
    assert codes(report(ckpt3)) == {"tensor-unexpected"}


def test_norms_in_float32_are_accepted(make: Make) -> None:
    ckpt = make()
    rewrite_shard(ckpt / "model.safetensors", lambda ts: [
        TensorData(t.name, "F32", t.shape, encode("F32", decode(t.dtype, t.shape, t.data)))
        if t.name.startswith("mtp.") and "norm" in t.name else t
        for t in ts])
    assert report(ckpt)["findings"] == []


def test_tokenizer_and_chat_template_missing(make: Make) -> None:
    ckpt = make()
    (ckpt / "chat_template.jinja").unlink()
    assert codes(report(ckpt)) == {"chat-template-missing"}
    edit_json(ckpt / "tokenizer_config.json", lambda d: d.update(chat_template="{{ messages }}"))
    assert report(ckpt)["findings"] == []  # a template inside tokenizer_config.json counts
    (ckpt / "tokenizer.json").unlink()
    assert codes(report(ckpt)) == {"tokenizer-missing"}

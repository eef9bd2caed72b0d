"""Each finding code of the catalogue, from a checkpoint built broken on purpose;
healthy checkpoints of every family and format give no finding at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.diagnosis.doctor import CATALOGUE, doctor
from mtpforge.families import MTP
from mtpforge.families.base import LINEAR
from mtpforge.formats.synthetic import FORMATS
from mtpforge.formats.values import decode, encode
from mtpforge.testing.factory import default_scope

from .conftest import codes, edit_json, read_all, rewrite_shard, shard_of

Make = Callable[..., Path]
MTP_DOWN = "mtp.layers.0.mlp.down_proj.weight"
FULL = "model.language_model.layers.3"


def report(path: Path) -> dict:
    return doctor(path).to_dict()


def drop_tensors(ckpt: Path, names: set[str]) -> None:
    """Remove `names` from their shards and from the index, as a careless exporter would."""
    for shard in sorted(ckpt.glob("*.safetensors")):
        rewrite_shard(shard, lambda ts: [t for t in ts if t.name not in names])
    if (ckpt / INDEX_NAME).exists():
        def change(doc: dict) -> None:
            doc["weight_map"] = {k: v for k, v in doc["weight_map"].items() if k not in names}
            doc["metadata"]["total_size"] = sum(
                t.nbytes for s in set(doc["weight_map"].values()) for t in read_all(ckpt / s) if t.name in doc["weight_map"])
        edit_json(ckpt / INDEX_NAME, change)


def set_config(ckpt: Path, change: Callable[[dict], None]) -> None:
    edit_json(ckpt / "config.json", change)


# ---- healthy -----------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe", "qwen3_next"])
@pytest.mark.parametrize("quant", [None, *sorted(FORMATS)])
def test_healthy_checkpoints_of_every_family_and_format_have_no_findings(make: Make, family: str, quant: str | None) -> None:
    ckpt = make(family=family, quant=quant, shards=2)
    r = report(ckpt)
    assert r["findings"] == [] and r["ok"]


@pytest.mark.parametrize("variant", [
    {"shards": 1}, {"shards": 1, "index": True}, {"shards": 4}, {"vision": False}, {"text_only_arch": True},
    {"fused_experts": False, "family": "qwen3_5_moe"}, {"fused_experts": False, "family": "qwen3_next", "quant": "w8a16"},
])
def test_healthy_layouts(make: Make, variant: dict) -> None:
    assert report(make(**variant))["findings"] == []


# ---- MTP ---------------------------------------------------------------------

def test_mtp_missing_when_config_declares_a_head_that_was_dropped(make: Make) -> None:
    r = report(make(mtp=False, shards=2))  # the tmax-27b situation
    assert codes(r) == {"mtp-missing"} and not r["ok"]


def test_mtp_unindexed_when_the_head_sits_in_a_file_the_index_ignores(make: Make) -> None:
    ckpt = make(shards=2)
    mtp = [t for s in ckpt.glob("*.safetensors") for t in read_all(s) if t.name.startswith("mtp.")]
    drop_tensors(ckpt, {t.name for t in mtp})
    write_safetensors(ckpt / "model_extra_tensors.safetensors", mtp)
    r = report(ckpt)
    assert codes(r) == {"mtp-unindexed", "mtp-missing"}
    unindexed = next(f for f in r["findings"] if f["code"] == "mtp-unindexed")
    assert unindexed["files"] == ["model_extra_tensors.safetensors"] and len(unindexed["tensors"]) == 15


def test_mtp_incomplete_when_a_tensor_is_missing_or_misshapen(make: Make) -> None:
    ckpt = make(shards=2)
    drop_tensors(ckpt, {MTP_DOWN})
    r = report(ckpt)
    assert codes(r) == {"mtp-incomplete"} and r["findings"][0]["tensors"] == [MTP_DOWN]

    ckpt2 = make("wrong-shape")
    rewrite_shard(shard_of(ckpt2, "mtp.fc.weight"), lambda ts: [
        TensorData(t.name, t.dtype, (t.shape[1], t.shape[0]), t.data) if t.name == "mtp.fc.weight" else t for t in ts])
    f = report(ckpt2)["findings"]
    assert [x["code"] for x in f] == ["mtp-incomplete"] and "shape [128, 64], expected [64, 128]" in f[0]["message"]


def test_mtp_undeclared_when_config_forgets_the_head(make: Make) -> None:
    ckpt = make()
    set_config(ckpt, lambda c: c["text_config"].update(mtp_num_hidden_layers=0))
    r = report(ckpt)
    assert codes(r) == {"mtp-undeclared"} and r["ok"]  # a warning: the head is merely unused


def test_mtp_quant_uncovered_in_compressed_tensors_and_in_modelopt(make: Make) -> None:
    ckpt = make(quant="w4a16")
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].remove("re:^mtp.*"))
    r = report(ckpt)
    assert codes(r) == {"mtp-quant-uncovered"}
    assert len(r["findings"][0]["tensors"]) == 8  # fc, q, k, v, o, gate, up, down

    mo = make("modelopt", quant="modelopt-nvfp4")
    edit_json(mo / "hf_quant_config.json", lambda d: d["quantization"]["exclude_modules"].remove("mtp*"))
    r = report(mo)
    assert codes(r) == {"mtp-quant-uncovered"} and r["findings"][0]["files"] == ["hf_quant_config.json"]


def test_mtp_ignore_fused_unsafe_for_per_module_entries(make: Make) -> None:
    ckpt = make(quant="nvfp4")
    per_module = ["mtp.fc"] + [f"mtp.layers.0.{m}" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]

    def per_module_ignore(c: dict) -> None:
        ignore = c["quantization_config"]["ignore"]
        ignore.remove("re:^mtp.*")
        ignore.extend(per_module)

    set_config(ckpt, per_module_ignore)
    r = report(ckpt)
    assert codes(r) == {"mtp-ignore-fused-unsafe"}  # vLLM loads it; SGLang's fused modules do not
    assert set(r["findings"][0]["tensors"]) == {f"{m}.weight" for m in per_module
                                                if not m.endswith(("o_proj", "down_proj", "fc"))}


def test_mtp_quantized_is_a_warning(make: Make) -> None:
    ckpt = make(quant="w4a16", scope=lambda s: default_scope(s) or (s.group == MTP and s.kind == LINEAR))
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].remove("re:^mtp.*"))
    r = report(ckpt)
    assert codes(r) == {"mtp-quantized"} and r["ok"]


def test_missing_or_misshapen_companions(make: Make) -> None:
    ckpt = make(quant="w4a16-asym", shards=2)
    drop_tensors(ckpt, {f"{FULL}.self_attn.o_proj.weight_scale", "model.language_model.layers.0.mlp.up_proj.weight_shape"})
    r = report(ckpt)
    assert "mtp-quant-companions" in codes(r)
    f = next(x for x in r["findings"] if x["code"] == "mtp-quant-companions")
    assert set(f["tensors"]) == {f"{FULL}.self_attn.o_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"}

    nv = make("nvfp4", quant="nvfp4")
    name = f"{FULL}.mlp.gate_proj.weight_scale"
    rewrite_shard(shard_of(nv, name), lambda ts: [
        TensorData(t.name, t.dtype, (t.shape[0], t.shape[1] // 2), t.data[: len(t.data) // 2]) if t.name == name else t
        for t in ts])
    assert "mtp-quant-companions" in codes(report(nv))


def test_mtp_norm_convention_shifted_head(make: Make) -> None:
    ckpt = make()
    shift_norms(ckpt, lambda n: n.startswith("mtp.") and "norm" in n, +1.0)
    r = report(ckpt)
    assert codes(r) == {"mtp-norm-convention"} and "+1" in r["findings"][0]["message"]

    missing_shift = make("minus")
    shift_norms(missing_shift, lambda n: n.startswith("mtp.") and "norm" in n, -1.0)
    assert codes(report(missing_shift)) == {"mtp-norm-convention"}


def test_norm_check_compares_like_with_like_not_absolute_values(make: Make) -> None:
    # pre_fc norms far below 0.5 (the factory's -0.6) are normal; a checkpoint whose trunk and
    # head norms are both 1 + w is not a head defect.
    ckpt = make()
    shift_norms(ckpt, lambda n: n.endswith("norm.weight") and "linear_attn" not in n and "pre_fc" not in n, +1.0)
    assert report(ckpt)["findings"] == []


def shift_norms(ckpt: Path, which: Callable[[str], bool], delta: float) -> None:
    for shard in ckpt.glob("*.safetensors"):
        def change(ts: list[TensorData]) -> list[TensorData]:
            return [TensorData(t.name, t.dtype, t.shape, encode(t.dtype, decode(t.dtype, t.shape, t.data) + delta))
                    if which(t.name) else t for t in ts]
        rewrite_shard(shard, change)


def test_several_defects_are_all_reported(make: Make) -> None:
    ckpt = make(mtp=False, shards=2, quant="w4a16")
    (ckpt / "tokenizer.json").unlink()
    edit_json(ckpt / INDEX_NAME, lambda d: d["metadata"].update(total_size=1))
    set_config(ckpt, lambda c: c["quantization_config"]["ignore"].append("re:.*mlp.down_proj$"))
    r = report(ckpt)
    assert codes(r) == {"mtp-missing", "tokenizer-missing", "index-total-size", "quant-declared-mismatch"}
    severities = [f["severity"] for f in r["findings"]]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)  # most severe first


def test_every_catalogue_code_is_exercised_here() -> None:
    here = Path(__file__).parent
    source = "".join((here / name).read_text() for name in ("test_doctor.py", "test_doctor_storage.py", "test_hardening_read.py"))
    untested = [code for code in CATALOGUE if f'"{code}"' not in source]
    assert untested == []

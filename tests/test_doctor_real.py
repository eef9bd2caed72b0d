"""doctor on checkpoints laid out as the field publishes them: no false alarm on a healthy export, every
real defect one finding that names its files, tensors and fix, and `--fix` repairing what it claims.

Fixtures:
- the hollow Qwen3.6-27B replica: the real config and the real 1199 tensor names, shapes and dtypes of the
  public Qwen/Qwen3.6-27B checkpoint (../shared/reference/qwen3.6-27b, shipped in mtpforge/testing/data);
- AutoRound's side file: auto-round's export writes the tensors the quantized model lacks (the MTP head) to
  `model_extra_tensors.safetensors`, adds them to weight_map and leaves metadata.total_size as it was (intel/
  auto-round, the missing-tensors export helper; Intel/Qwen3.6-27B-int4-AutoRound and -35B-A3B ship that file);
- GLM-4.7's standalone `mtp.safetensors` (issue 13), here under the Qwen head's names;
- the pre-fc norm values of a trained head: effective scales 0.2734 (embedding) and 0.4937 (hidden) on
  Qwen3.6-35B-A3B (jundot/omlx#3742, docs DOMAIN §2.4), stored as offsets -0.7266 and -0.5063.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mtpforge.checkpoint.header import read_header
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.diagnosis.doctor import doctor
from mtpforge.formats.values import decode, encode
from mtpforge.surgery.fix import fix
from mtpforge.testing.factory import write_shards, write_tokenizer_files
from mtpforge.testing.replica import reference_inventory

from .conftest import read_all, rewrite_shard

Make = Callable[..., Path]
PRE_FC = {"mtp.pre_fc_norm_embedding.weight": -0.7266, "mtp.pre_fc_norm_hidden.weight": -0.5063}  # offsets of 0.2734, 0.4937
SIDECAR = "model_extra_tensors.safetensors"


def hollow_27b(out: Path, *, dtype: Callable[[str], str] = lambda name: "BF16",
               values: dict[str, float] | None = None, side: str | None = None, stale_total: bool = False) -> Path:
    """The Qwen3.6-27B replica in 6 shards, with `dtype(name)` per tensor, constant `values` for some tensors
    (the rest a hole of zeros), and the head in the side file `side` (indexed) when given."""
    config, inventory = reference_inventory()
    out.mkdir()
    values = values or {}

    def tensor(t: dict) -> TensorData:
        name, shape, dt = t["name"], tuple(t["shape"]), dtype(t["name"])
        data = encode(dt, np.full(shape, values[name])) if name in values else None
        return TensorData(name, dt, shape, data)

    tensors = [tensor(t) for t in inventory]
    head = [t for t in tensors if side and t.name.startswith("mtp.")]
    write_shards(out, [t for t in tensors if t not in head], shards=6, index=True)
    if side:
        write_safetensors(out / side, head, {"format": "pt"})
        doc = json.loads((out / INDEX_NAME).read_text())
        doc["weight_map"].update({t.name: side for t in head})
        if not stale_total:
            doc["metadata"]["total_size"] += sum(t.nbytes for t in head)
        (out / INDEX_NAME).write_text(json.dumps(doc))
    (out / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(out, vocab_size=16)
    return out


def found(path: Path) -> dict[str, dict]:
    return {f["code"]: f for f in doctor(path).to_dict()["findings"]}


# ---- healthy exports ------------------------------------------------------------------------------------

def test_an_f16_head_in_a_bf16_checkpoint_is_healthy_with_a_note(tmp_path: Path) -> None:
    ckpt = hollow_27b(tmp_path / "f16-head", dtype=lambda n: "F16" if n.startswith("mtp.") else "BF16")
    report = doctor(ckpt)
    assert report.ok and [f.code for f in report.findings] == ["dtype-cast"]
    note = report.to_dict()["findings"][0]
    assert note["severity"] == "info" and len(note["tensors"]) == 15 and all(n.startswith("mtp.") for n in note["tensors"])
    assert "stored F16 where config.json says BF16" in note["message"] and note["files"] and note["fix"]


@pytest.mark.parametrize("side", [SIDECAR, "mtp.safetensors"])
def test_a_head_in_an_indexed_side_file_is_healthy(tmp_path: Path, side: str) -> None:
    assert doctor(hollow_27b(tmp_path / "side", side=side)).findings == ()


def test_the_norm_values_of_a_trained_head_are_healthy(tmp_path: Path) -> None:
    assert doctor(hollow_27b(tmp_path / "trained", values=PRE_FC)).findings == ()


# ---- index total_size -------------------------------------------------------------------------------------

def test_a_total_size_that_leaves_out_the_autoround_side_file_is_named_and_fixed(tmp_path: Path) -> None:
    ckpt = hollow_27b(tmp_path / "autoround", side=SIDECAR, stale_total=True)
    f = found(ckpt)
    assert set(f) == {"index-total-size"}
    stale = f["index-total-size"]
    assert stale["files"] == [INDEX_NAME, SIDECAR] and stale["command"]
    assert f"leaves out {SIDECAR} (15 tensors, 15 of them mtp.*" in stale["message"]

    result = fix(ckpt, str(tmp_path / "fixed"))
    assert result.after is not None and result.after.findings == ()
    index = json.loads((tmp_path / "fixed" / INDEX_NAME).read_text())
    held = sum(t.nbytes for s in set(index["weight_map"].values()) for t in read_header(tmp_path / "fixed" / s).tensors.values())
    assert index["metadata"]["total_size"] == held


# ---- norm convention ----------------------------------------------------------------------------------------

def test_a_head_that_lost_the_offset_only_on_the_pre_fc_norms_is_caught(tmp_path: Path) -> None:
    absolute = {name: 1 + w for name, w in PRE_FC.items()}  # the published effective scales, stored as such
    f = found(hollow_27b(tmp_path / "pre-fc", values=absolute))
    assert set(f) == {"mtp-norm-convention"}
    bad = f["mtp-norm-convention"]
    assert bad["severity"] == "error" and sorted(bad["tensors"]) == sorted(PRE_FC)
    assert "mix conventions" in bad["message"] and "shifted by +1" in bad["message"]
    assert "in the trunk's convention: norm.weight, layers.0.input_layernorm.weight" in bad["message"]
    assert bad["files"] and all(name.endswith(".safetensors") for name in bad["files"])


def test_a_mixed_convention_names_the_shifted_and_the_unshifted_keys(make: Make) -> None:
    ckpt = make()
    shift(ckpt, lambda n: n.startswith("mtp.") and n.endswith(("q_norm.weight", "k_norm.weight")), +1.0)
    bad = found(ckpt)["mtp-norm-convention"]
    assert sorted(bad["tensors"]) == ["mtp.layers.0.self_attn.k_norm.weight", "mtp.layers.0.self_attn.q_norm.weight"]
    assert "shifted by +1 (stored as 1 + w, or shifted twice): layers.0.self_attn.q_norm.weight, " \
           "layers.0.self_attn.k_norm.weight" in bad["message"]
    assert "in the trunk's convention: pre_fc_norm_embedding.weight, pre_fc_norm_hidden.weight, norm.weight" in bad["message"]


def test_a_uniform_shift_is_reported_as_one(make: Make) -> None:
    ckpt = make()
    shift(ckpt, lambda n: n.startswith("mtp.") and "norm" in n, -1.0)
    bad = found(ckpt)["mtp-norm-convention"]
    assert bad["message"].startswith("the MTP norms are shifted by -1") and len(bad["tensors"]) == 7


@pytest.mark.parametrize("delta", [+1.0, -1.0])
def test_fix_restores_the_shifted_keys_only_and_the_result_passes(tmp_path: Path, make: Make, delta: float) -> None:
    ckpt = make(shards=2)
    before = norms(ckpt)
    shift(ckpt, lambda n: "pre_fc_norm" in n, delta)
    assert set(found(ckpt)) == {"mtp-norm-convention"}
    result = fix(ckpt, str(tmp_path / "fixed"))
    assert result.after is not None and result.after.findings == ()
    after = norms(tmp_path / "fixed")
    assert after.keys() == before.keys()
    for name, value in before.items():  # BF16 rounding of x + 1 - 1 is within one step of 2 ** -7
        np.testing.assert_allclose(after[name], value, atol=2 ** -7, err_msg=name)
    assert any("restore the offset convention of mtp.pre_fc_norm_embedding.weight" in a for a in result.plan.actions)


def shift(ckpt: Path, which: Callable[[str], bool], delta: float) -> None:
    for shard in ckpt.glob("*.safetensors"):
        rewrite_shard(shard, lambda ts: [
            TensorData(t.name, t.dtype, t.shape, encode(t.dtype, decode(t.dtype, t.shape, t.data) + delta))
            if which(t.name) else t for t in ts])


def norms(ckpt: Path) -> dict[str, np.ndarray]:
    return {t.name: decode(t.dtype, t.shape, t.data) for s in ckpt.glob("*.safetensors") for t in read_all(s)
            if t.name.startswith("mtp.") and "norm" in t.name}


# ---- the largest public MoE export, at full size ------------------------------------------------------------
# nvidia/Qwen3.5-397B-A17B-NVFP4's real config.json and hf_quant_config.json (../shared/reference/public-configs,
# as kept by ai-dynamo/aiconfigurator), per-expert ModelOpt NVFP4 names and packed shapes: 371,447 tensors in 51
# shards, as issue 13 counted on the public index (mtpforge/testing/hollow_moe.py). Timed in bench/doctor_scale.py.

@pytest.mark.slow
def test_the_397b_nvfp4_export_at_full_size_is_healthy(tmp_path: Path) -> None:
    from mtpforge.testing.hollow_moe import make_hollow_moe, shared_reference

    ckpt = make_hollow_moe(tmp_path / "q397", shared_reference())
    report = doctor(ckpt)
    # its exclude list names mtp.layers.0* but not mtp.fc, so the head's fc is declared (and stored) NVFP4: a warning
    assert report.ok, [f.message for f in report.findings]
    assert [(f.code, f.tensors) for f in report.findings] == [("mtp-quantized", ("mtp.fc.weight",))]


@pytest.mark.slow
def test_a_defect_in_a_whole_layer_of_experts_is_one_finding(tmp_path: Path) -> None:
    from mtpforge.testing.hollow_moe import make_hollow_moe, shared_reference

    layer = "model.language_model.layers.7.mlp.experts."  # 512 experts x 3 projections left BF16 by a partial export
    ckpt = make_hollow_moe(tmp_path / "q397", shared_reference(),
                           stored_as=lambda module, declared: declared and not module.startswith(layer))
    report = doctor(ckpt).to_dict()
    bad = [f for f in report["findings"] if f["code"] == "quant-declared-mismatch"]
    assert len(bad) == 1 and not report["ok"]
    f = bad[0]
    assert len(f["tensors"]) == 1536 and all(t.startswith(layer) for t in f["tensors"])
    assert "1536 weights" in f["message"] and f"{layer}0.gate_proj.weight" in f["message"]  # a count and examples
    assert f["fix"] and set(f["files"]) >= {"config.json", "hf_quant_config.json"}


def test_a_config_repeated_in_config_json_is_walked_once_but_named_in_both_files() -> None:
    """ModelOpt writes its hf_quant_config.json again as config.json's quantization_config (nvidia/Qwen3.5-397B-A17B-NVFP4,
    ../shared/reference/public-configs): both decide every module alike, so doctor checks 95K modules once, not twice;
    a config that differs in one exclude entry is checked on its own."""
    from mtpforge.checkpoint.quant_config import parse, parse_modelopt

    root = Path("/work/shared/reference/public-configs/nvidia--Qwen3.5-397B-A17B-NVFP4")
    hf_quant = json.loads((root / "hf_quant_config.json").read_text())
    in_config = parse(json.loads((root / "config.json").read_text())["quantization_config"], "config.json quantization_config")
    in_file = parse_modelopt(hf_quant, "hf_quant_config.json")
    assert in_config.decision_key is not None and in_config.decision_key == in_file.decision_key
    hf_quant["quantization"]["exclude_modules"] = [e for e in hf_quant["quantization"]["exclude_modules"] if e != "lm_head"]
    assert parse_modelopt(hf_quant, "hf_quant_config.json").decision_key != in_file.decision_key


def test_the_cycle_collector_is_paused_only_while_reading(make: Make, tmp_path: Path) -> None:
    import gc

    from mtpforge.diagnosis.inspection import inspect_checkpoint
    from mtpforge.errors import CheckpointError

    ckpt = make()
    doctor(ckpt), inspect_checkpoint(ckpt)
    assert gc.isenabled()
    with pytest.raises(CheckpointError):
        doctor(tmp_path / "absent")
    assert gc.isenabled()
    gc.disable()  # a caller that disabled it keeps it disabled
    try:
        doctor(ckpt)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_finding_names_its_files_and_its_fix(make: Make) -> None:
    ckpt = make(shards=2, quant="nvfp4")
    (ckpt / "tokenizer.json").unlink()
    shift(ckpt, lambda n: "pre_fc_norm" in n, +1.0)
    for shard in ckpt.glob("model-*.safetensors"):  # a trunk tensor lost, a stray one added, the head's fc in F16
        rewrite_shard(shard, lambda ts: [TensorData(t.name, "F16", t.shape, t.data) if t.name == "mtp.fc.weight" else t
                                         for t in ts if t.name != "lm_head.weight"])
    rewrite_shard(sorted(ckpt.glob("model-*.safetensors"))[0],
                  lambda ts: [*ts, TensorData("model.language_model.layers.99.mlp.up_proj.weight", "BF16", (2, 2), bytes(8))])
    findings = doctor(ckpt).to_dict()["findings"]
    assert {f["code"] for f in findings} >= {"tokenizer-missing", "mtp-norm-convention", "tensor-missing", "dtype-cast",
                                             "tensor-unexpected", "index-unlisted-tensor"}
    for f in findings:
        assert f["files"] and f["fix"], f
        assert f["code"] != "tensor-missing" or f["files"] == ["config.json"]  # what implies the absent tensor

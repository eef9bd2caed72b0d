"""graft: the donor's head arrives byte for byte, indexed, excluded and declared;
incompatible donors are refused before anything is written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.diagnosis.doctor import doctor

from .conftest import CliResult, codes, edit_json, read_all
from .test_doctor import drop_tensors, set_config, shift_norms

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


def snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every file's size and hash: inputs must come out byte-identical."""
    return {str(p.relative_to(path)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


def mtp_bytes(path: Path) -> dict[str, bytes]:
    ckpt = open_checkpoint(path)
    out = {}
    for name, t in ckpt.tensors.items():
        if name.startswith("mtp."):
            with open(path / t.shard, "rb") as f:
                f.seek(t.begin)
                out[name] = f.read(t.nbytes)
    return out


@pytest.mark.parametrize("quant", [None, "w4a16", "nvfp4", "modelopt-nvfp4"])
def test_graft_restores_a_lost_head_byte_for_byte(tmp_path: Path, make: Make, cli: Cli, quant: str | None) -> None:
    base = make("base", shards=2)
    target = make("finetune", mtp=False, quant=quant, shards=3, seed=7)
    if quant:  # a careless exporter also dropped the MTP exclusion
        if quant == "modelopt-nvfp4":
            edit_json(target / "hf_quant_config.json", lambda d: d["quantization"]["exclude_modules"].remove("mtp*"))
            set_config(target, lambda c: c["quantization_config"]["ignore"].remove("mtp*"))
        else:
            set_config(target, lambda c: c["quantization_config"]["ignore"].remove("re:^mtp.*"))
    before = snapshot(target)
    out = tmp_path / "grafted"
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert snapshot(target) == before  # the input is untouched
    assert doctor(out).findings == ()
    assert mtp_bytes(out) == mtp_bytes(base)
    index = json.loads((out / INDEX_NAME).read_text())
    assert {n for n, s in index["weight_map"].items() if s == "mtp.safetensors"} == set(mtp_bytes(base))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in open_checkpoint(out).tensors.values())
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["mtp_num_hidden_layers"] == 1
    if quant == "modelopt-nvfp4":
        assert "mtp*" in json.loads((out / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
        assert "mtp*" in config["quantization_config"]["ignore"]
    elif quant:
        assert "re:^mtp.*" in config["quantization_config"]["ignore"]
    # untouched shards are hard links, not copies
    for shard in target.glob("*.safetensors"):
        assert (out / shard.name).stat().st_ino == shard.stat().st_ino
    head = read_all(out / "mtp.safetensors")
    assert len(head) == 15 and r.json()["after"]["ok"]


def test_graft_replaces_a_partial_or_wrongly_excluded_head(tmp_path: Path, make: Make) -> None:
    base = make("base")
    target = make("target", quant="nvfp4", shards=2, seed=3)
    drop_tensors(target, {"mtp.layers.0.mlp.down_proj.weight"})

    def per_module(c: dict) -> None:
        c["quantization_config"]["ignore"].remove("re:^mtp.*")
        c["quantization_config"]["ignore"] += ["mtp.fc", "mtp.layers.0.self_attn.q_proj", "mtp.layers.0.mlp.up_proj"]

    set_config(target, per_module)
    assert {"mtp-incomplete", "mtp-quant-uncovered"} <= codes(doctor(target).to_dict())
    from mtpforge.surgery.graft import graft

    graft(str(target), str(base), str(tmp_path / "out"))
    out = tmp_path / "out"
    assert doctor(out).findings == ()
    assert mtp_bytes(out) == mtp_bytes(base)
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "re:^mtp.*" in ignore and not any(e.startswith("mtp.") for e in ignore)
    # the old head's tensors left their shards
    assert all(not t.name.startswith("mtp.") for s in out.glob("model-*.safetensors") for t in read_all(s))


def test_graft_replaces_an_unindexed_head_file(tmp_path: Path, make: Make) -> None:
    from mtpforge.checkpoint.writer import write_safetensors
    from mtpforge.surgery.graft import graft

    base = make("base")
    target = make("target", shards=2, seed=5)
    stray = [t for s in target.glob("*.safetensors") for t in read_all(s) if t.name.startswith("mtp.")]
    drop_tensors(target, {t.name for t in stray})
    write_safetensors(target / "model_extra_tensors.safetensors", stray)
    graft(str(target), str(base), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "model_extra_tensors.safetensors").exists()
    assert doctor(tmp_path / "out").findings == ()


def test_single_file_target_gains_an_index(tmp_path: Path, make: Make) -> None:
    from mtpforge.surgery.graft import graft

    target = make("single", mtp=False)
    assert not (target / INDEX_NAME).exists()
    graft(str(target), str(make("base")), str(tmp_path / "out"))
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors", "mtp.safetensors"}


@pytest.mark.parametrize("family", ["qwen3_5_moe", "qwen3_next"])
def test_graft_moe_families(tmp_path: Path, make: Make, family: str) -> None:
    from mtpforge.surgery.graft import graft

    base = make("base", family=family)
    target = make("target", family=family, mtp=False, seed=2)
    graft(str(target), str(base), str(tmp_path / "out"))
    assert doctor(tmp_path / "out").findings == () and mtp_bytes(tmp_path / "out") == mtp_bytes(base)


def _hidden(c: dict) -> None:
    c["text_config"]["hidden_size"] = 96


@pytest.mark.parametrize("donor_kind,message", [
    ("other-hidden", "hidden: target 64 vs donor 96"),
    ("other-family", "is qwen3_next but the target is qwen3_5"),
    ("no-head", "nothing to graft"),
    ("shifted-norms", "shifted by +1.00"),
    ("quantized-head", "not an unquantized head"),
])
def test_donors_that_cannot_serve_are_refused_before_writing(tmp_path: Path, make: Make, cli: Cli, donor_kind: str,
                                                             message: str) -> None:
    from mtpforge.families import MTP
    from mtpforge.families.base import LINEAR
    from mtpforge.testing.factory import default_scope

    target = make("target", mtp=False)
    if donor_kind == "other-hidden":
        donor = make("donor")
        set_config(donor, _hidden)
    elif donor_kind == "other-family":
        donor = make("donor", family="qwen3_next")
    elif donor_kind == "no-head":
        donor = make("donor", mtp=False)
    elif donor_kind == "shifted-norms":
        donor = make("donor")
        shift_norms(donor, lambda n: n.startswith("mtp.") and "norm" in n, +1.0)
    else:
        donor = make("donor", quant="w4a16", scope=lambda s: default_scope(s) or (s.group == MTP and s.kind == LINEAR))
    before = snapshot(target)
    r = cli("graft", str(target), "--donor", str(donor), "--out", str(tmp_path / "out"))
    assert r.code == 3 and message in r.err and "Traceback" not in r.err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    assert snapshot(target) == before


def test_provenance_warning(tmp_path: Path, make: Make) -> None:
    from mtpforge.surgery.graft import open_donor, plan_graft

    target = make("target", mtp=False)
    (target / "README.md").write_text("---\nbase_model: Qwen/Qwen3.6-27B\n---\n# a finetune\n")
    assert any("not the target's recorded base Qwen/Qwen3.6-27B" in w
               for w in plan_graft(target, open_donor(str(make("other")))).warnings)
    same = make("Qwen3.6-27B")
    assert plan_graft(target, open_donor(str(same))).warnings == ()


def test_dry_run_existing_out_overlap_and_precision(tmp_path: Path, make: Make, cli: Cli) -> None:
    target, base = make("target", mtp=False), make("base")
    out = tmp_path / "out"
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out), "--dry-run", "--json")
    assert r.code == 0 and r.json()["dry_run"] and not out.exists()
    assert r.json()["written"] == [{"name": "mtp.safetensors", "tensors": 15, "bytes": r.json()["written_bytes"]}]
    out.mkdir()
    refused = cli("graft", str(target), "--donor", str(base), "--out", str(out))
    assert refused.code == 2 and f"--out {out} already exists" in refused.err and "--overwrite" in refused.err
    assert cli("graft", str(target), "--donor", str(base), "--out", str(out), "--overwrite").code == 0
    assert doctor(out).findings == ()
    inside = cli("graft", str(target), "--donor", str(base), "--out", str(target / "sub"))
    assert inside.code == 2 and "overlaps the input" in inside.err
    assert (f"Error: --out {target / 'sub'} overlaps the input {target}\n"
            "hint: write the output to a new directory; inputs are never modified\n") in inside.err
    nowhere = cli("graft", str(target), "--donor", "./no-such-dir", "--out", str(tmp_path / "x"))
    assert nowhere.code == 3 and "neither a local directory nor a hub repository id" in nowhere.err
    assert "hint: pass the base" in nowhere.err
    assert not (tmp_path / "x").exists()

"""strip --vision and doctor --fix: outputs that doctor passes, inputs untouched,
only changed shards rewritten."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import write_safetensors
from mtpforge.diagnosis.doctor import doctor

from .conftest import CliResult, codes, edit_json, read_all
from .test_doctor import drop_tensors, set_config
from .test_graft import snapshot

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


@pytest.mark.parametrize("quant", [None, "w4a16", "modelopt-nvfp4"])
def test_strip_vision(tmp_path: Path, make: Make, cli: Cli, quant: str | None) -> None:
    ckpt = make("vl", quant=quant, shards=3)
    vision_modules = ["model.visual.blocks.0.attn.qkv", "model.visual.merger.linear_fc1"]
    if quant == "w4a16":  # llm-compressor writes every skipped module by name
        set_config(ckpt, lambda c: c["quantization_config"]["ignore"].extend(vision_modules))
    before = snapshot(ckpt)
    out = tmp_path / "text"
    r = cli("strip", str(ckpt), "--vision", "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert snapshot(ckpt) == before
    assert doctor(out).findings == ()
    config = json.loads((out / "config.json").read_text())
    assert config["language_model_only"] is True
    assert config["architectures"] == json.loads((ckpt / "config.json").read_text())["architectures"]
    assert "vision_config" in config
    stripped = open_checkpoint(out)
    assert not any(n.startswith("model.visual.") for n in stripped.tensors)
    assert any(n.startswith("model.language_model.") for n in stripped.tensors)
    if quant == "w4a16":
        ignore = config["quantization_config"]["ignore"]
        assert not set(vision_modules) & set(ignore) and "re:.*visual.*" in ignore
    # shards without vision tensors are linked, the others rewritten
    rewritten = {w["name"] for w in r.json()["written"]}
    for shard in ckpt.glob("*.safetensors"):
        has_vision = any(t.name.startswith("model.visual.") for t in read_all(shard))
        target = out / shard.name
        if has_vision:
            assert shard.name in rewritten or not target.exists()
        else:
            assert target.stat().st_ino == shard.stat().st_ino


def test_strip_refuses_when_there_is_nothing_to_strip(tmp_path: Path, make: Make, cli: Cli) -> None:
    for name, kwargs, why in (
            ("text-class", {"text_only_arch": True}, "qwen3_5 (Qwen3_5ForCausalLM) has no vision tower to strip"),
            ("stripped", {"vision": False}, "already text-only (language_model_only: true, no vision tensors)")):
        r = cli("strip", str(make(name, **kwargs)), "--vision", "--out", str(tmp_path / f"out-{name}"))
        assert r.code == 3 and "Error:" in r.err and not (tmp_path / f"out-{name}").exists()
        assert f"Error: {tmp_path / name}: {why}\n" in r.err, r.err
    r = cli("strip", str(make("vl")), "--out", str(tmp_path / "o"))  # what to strip?
    assert r.code == 2 and r.err.endswith("Error: say what to strip: --vision\nhint: mtpforge strip TARGET --vision --out OUT\n")


def test_fix_indexes_an_unindexed_head(tmp_path: Path, make: Make, cli: Cli) -> None:
    ckpt = make(shards=2)
    head = [t for s in ckpt.glob("*.safetensors") for t in read_all(s) if t.name.startswith("mtp.")]
    drop_tensors(ckpt, {t.name for t in head})
    write_safetensors(ckpt / "model_extra_tensors.safetensors", head)
    assert codes(doctor(ckpt).to_dict()) == {"mtp-unindexed", "mtp-missing"}
    out = tmp_path / "fixed"
    r = cli("doctor", str(ckpt), "--fix", "--out", str(out), "--json")
    assert r.code == 0 and r.json()["after"]["findings"] == [] and r.json()["unfixable"] == []
    index = json.loads((out / INDEX_NAME).read_text())
    assert {n for n, s in index["weight_map"].items() if s == "model_extra_tensors.safetensors"} == {t.name for t in head}


def test_fix_ignore_lists_declaration_and_total_size(tmp_path: Path, make: Make, cli: Cli) -> None:
    ckpt = make(quant="nvfp4", shards=2, vision=False)

    def break_config(c: dict) -> None:
        c["quantization_config"]["ignore"].remove("re:^mtp.*")
        c["quantization_config"]["ignore"] += ["mtp.layers.0.self_attn.q_proj", "mtp.layers.0.self_attn.k_proj"]
        c["text_config"]["mtp_num_hidden_layers"] = 0
        c["language_model_only"] = False

    set_config(ckpt, break_config)
    edit_json(ckpt / INDEX_NAME, lambda d: d["metadata"].update(total_size=5))
    before = snapshot(ckpt)
    found = codes(doctor(ckpt).to_dict())
    assert {"mtp-quant-uncovered", "mtp-undeclared", "vision-missing-undeclared", "index-total-size"} <= found
    out = tmp_path / "fixed"
    r = cli("doctor", str(ckpt), "--fix", "--out", str(out))
    assert r.code == 0 and "healthy" in r.out
    assert snapshot(ckpt) == before and doctor(out).findings == ()
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["mtp_num_hidden_layers"] == 1 and config["language_model_only"] is True
    assert "re:^mtp.*" in config["quantization_config"]["ignore"]


def test_fix_says_what_it_cannot_fix_and_writes_nothing(tmp_path: Path, make: Make, cli: Cli) -> None:
    ckpt = make(mtp=False)
    out = tmp_path / "fixed"
    r = cli("doctor", str(ckpt), "--fix", "--out", str(out), "--json")
    assert r.code == 1 and not out.exists()
    left = r.json()["unfixable"]
    assert [f["code"] for f in left] == ["mtp-missing"] and left[0]["command"].startswith("mtpforge graft")
    r = cli("doctor", str(ckpt), "--fix")  # --fix needs --out
    assert r.code == 2 and r.err.endswith("Error: --fix writes a repaired copy: give it --out DIR\n"
                                          f"hint: mtpforge doctor {ckpt} --fix --out {ckpt}-fixed\n")
    r = cli("doctor", str(ckpt), "--out", str(out))  # --out needs --fix
    assert r.code == 2 and r.err.endswith("Error: --out, --overwrite and --dry-run go with --fix\n"
                                          f"hint: mtpforge doctor {ckpt} --fix --out OUT\n")
    assert not out.exists()

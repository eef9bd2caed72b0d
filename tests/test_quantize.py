"""quantize (RTN): the scope the family rules give, compressed-tensors' own reading
of the result, the head kept and excluded, bad requests refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor

from .conftest import CliResult
from .test_graft import mtp_bytes, snapshot

torch = pytest.importorskip("torch")
Make = Callable[..., Path]
Cli = Callable[..., CliResult]


@pytest.mark.parametrize("scheme,group", [("w4a16", 32), ("w4a16-asym", 16), ("w8a16", 0), ("w8a16-asym", 64)])
def test_rtn_output_is_healthy_and_reads_back_within_half_a_step(tmp_path: Path, make: Make, cli: Cli, scheme: str,
                                                                 group: int | None) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    from mtpforge.checkpoint.tensors import read_tensor

    base = make("base", shards=2)
    before = snapshot(base)
    args = ["quantize", str(base), "--out", str(tmp_path / "q"), "--scheme", scheme]
    args += ["--group-size", str(group)] if group is not None else []
    r = cli(*args)
    assert r.code == 0, r.err
    assert snapshot(base) == before and doctor(tmp_path / "q").findings == ()
    out, src = open_checkpoint(tmp_path / "q"), open_checkpoint(base)
    assert mtp_bytes(tmp_path / "q") == mtp_bytes(base)  # the head is kept as stored
    quantization_config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    weights = quantization_config["config_groups"]["group_0"]["weights"]
    cs = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    quantized = [w for w in out.stored.values() if w.quantized]
    assert {w.name.split(".")[-2] for w in quantized} == {"in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "k_proj", "v_proj",
                                                         "o_proj", "gate_proj", "up_proj", "down_proj"}
    for w in quantized:
        original = read_tensor(src, src.tensors[w.name]).float()
        deq = PackedQuantizationCompressor.decompress({k: read_tensor(out, v) for k, v in w.parts.items()}, cs)["weight"].float()
        group_size = original.shape[1] // w.parts["weight_scale"].shape[1]
        scale = read_tensor(out, w.parts["weight_scale"]).float().repeat_interleave(group_size, 1)
        assert bool(((deq - original).abs() <= scale * 0.5 + 1e-3).all()), w.name


def test_quantize_refuses_bad_requests(tmp_path: Path, make: Make, cli: Cli) -> None:
    base = make("base")
    r = cli("quantize", str(base), "--out", str(tmp_path / "a"), "--group-size", "48")
    assert r.code == 2 and "does not divide" in r.err
    assert ("Error: group size 48 does not divide the inputs of model.language_model.layers.0.linear_attn.in_proj_qkv.weight "
            "[128, 64]\nhint: choose a group size that divides every quantized layer's input dimension\n") in r.err
    q = make("q", quant="w4a16")
    r = cli("quantize", str(q), "--out", str(tmp_path / "b"))
    assert r.code == 2 and "already quantized" in r.err
    assert f"Error: {q} is already quantized\nhint: quantize the BF16 base\n" in r.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quantize_takes_an_open_checkpoint_and_writes_the_same_bytes(tmp_path: Path, make: Make) -> None:
    from mtpforge import quantize

    base = make("base", shards=2)
    by_path = quantize(str(base), tmp_path / "a", scheme="w4a16-asym", group_size=32)
    by_checkpoint = quantize(open_checkpoint(base), tmp_path / "b", scheme="w4a16-asym", group_size=32)
    assert by_checkpoint.to_dict() == by_path.to_dict()
    assert snapshot(tmp_path / "b") == snapshot(tmp_path / "a")

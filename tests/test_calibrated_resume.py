"""Calibration that survives its own length: GPTQ interrupted after a layer restarts there, with the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_gptq_interrupted_after_a_layer_resumes_there_with_the_same_tensors(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mtpforge.checkpoint.tensors import read_tensor
    from mtpforge.quant import quantize
    from mtpforge.quant import resume as resume_module

    (tmp_path / "calib.json").write_text(json.dumps(json.loads((TINY.parent / "prompts.json").read_text())["prompts"][:6]))
    options = {"method": "gptq", "scheme": "w4a16", "group_size": 32, "calibration": str(tmp_path / "calib.json")}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    lines: list[str] = []
    quantize(str(TINY), whole, progress=lines.append, **options)
    assert [line.split(":")[0] for line in lines if line.startswith("calibrated layer")] == \
        [f"calibrated layer {i}/5" for i in range(1, 6)] and "ETA" in lines[-1]

    def stop(index: int) -> None:
        if index == 2:  # subgraph 0 holds the embeddings only; 1 and 2 are decoder layers 0 and 1
            raise Interrupted

    monkeypatch.setattr(resume_module, "after_layer_saved", stop)
    with pytest.raises(Interrupted):
        quantize(str(TINY), resumed, **options)
    assert not resumed.exists()
    [folder] = tmp_path.glob(".resumed.resume-*")
    assert sorted(p.name for p in folder.iterdir()) == ["0001.safetensors", "0002.safetensors"]
    saved = resume_module.done_modules(resume_module.saved_layers(folder))
    assert [m.split(".layers.")[1].split(".")[0] for m in saved] == ["0"] * 6 + ["1"] * 6  # GDN qkv/z/out + MLP, each layer
    monkeypatch.undo()
    lines.clear()
    quantize(str(TINY), resumed, progress=lines.append, **options)
    assert any(line.startswith("resuming: 12 weights of finished layers") for line in lines), lines
    assert not folder.exists()  # published: the saved layers are gone
    a, b = open_checkpoint(whole), open_checkpoint(resumed)
    assert a.config["quantization_config"] == b.config["quantization_config"]
    assert sorted(a.tensors) == sorted(b.tensors)
    def raw(ckpt, name: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return read_tensor(ckpt, ckpt.tensors[name]).contiguous().view(-1).view(torch.uint8)

    # Everything outside the decoder layers: byte for byte.
    plain = [n for n in a.tensors if ".language_model.layers." not in n]
    assert [n for n in plain if not torch.equal(raw(a, n), raw(b, n))] == []
    # The decoder layers: the same computation on the same inputs, but llm-compressor's CPU GPTQ is not
    # bit-reproducible: two uninterrupted runs of this very request differed in 20,912 packed bytes over layers 1-3, a
    # resumed run in 47,965 (docs/quantize.md). They are held to a few percent of their bytes, not to zero.
    later = [n for n in a.tensors if n not in plain]
    differing = sum(int((raw(a, n) != raw(b, n)).sum()) for n in later)
    assert differing <= 0.05 * sum(raw(a, n).numel() for n in later), differing


@pytest.mark.slow
def test_awq_interrupted_after_a_layer_resumes_there_with_the_same_result(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from mtpforge.checkpoint.tensors import read_tensor
    from mtpforge.quant import quantize
    from mtpforge.quant import resume as resume_module

    (tmp_path / "calib.json").write_text(json.dumps(json.loads((TINY.parent / "prompts.json").read_text())["prompts"][:3]))
    options = {"method": "awq", "scheme": "w4a16", "group_size": 32, "calibration": str(tmp_path / "calib.json"),
               "seq_len": 64}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    lines: list[str] = []
    quantize(str(TINY), whole, progress=lines.append, **options)
    assert [line.split(":")[0] for line in lines if line.startswith("calibrated layer")] == \
        [f"calibrated layer {i}/5" for i in range(1, 6)]  # AWQ's layers; then one pass quantizes the smoothed weights
    assert any(line.startswith("quantized the smoothed weights") for line in lines), lines

    def stop(index: int) -> None:
        if index == 2:  # subgraph 0 holds the embeddings only; 1 and 2 are decoder layers 0 and 1
            raise Interrupted

    monkeypatch.setattr(resume_module, "after_layer_saved", stop)
    with pytest.raises(Interrupted):
        quantize(str(TINY), resumed, **options)
    assert not resumed.exists()
    [folder] = tmp_path.glob(".resumed.resume-*/awq-*")
    assert sorted(p.name for p in folder.iterdir()) == ["0000.safetensors", "0001.safetensors", "0002.safetensors"]
    kept = {n for i in (1, 2) for n in load_file(folder / f"{i:04d}.safetensors")}
    # What Qwen3.5's mappings smooth in GDN layers 0 and 1: the two norms, the GDN input projections, gate/up and down.
    layer0 = {n.split(".layers.0.")[1] for n in kept if ".layers.0." in n}
    assert {"input_layernorm.weight", "post_attention_layernorm.weight", "linear_attn.in_proj_qkv.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"} <= layer0, layer0
    assert {n.split(".layers.")[1].split(".")[0] for n in kept} == {"0", "1"}
    monkeypatch.undo()
    lines.clear()
    quantize(str(TINY), resumed, progress=lines.append, **options)
    assert any(line.startswith("resuming: 3 layers smoothed by an earlier run") for line in lines), lines
    assert not folder.parent.exists()  # published: the saved layers are gone
    a, b = open_checkpoint(whole), open_checkpoint(resumed)
    assert a.config["quantization_config"] == b.config["quantization_config"]
    assert sorted(a.tensors) == sorted(b.tensors)

    def raw(ckpt, name: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return read_tensor(ckpt, ckpt.tensors[name]).contiguous().view(-1).view(torch.uint8)

    # The resumed layers come out smoothed (the saved norms were put back: not the source's, as an unsmoothed one is) ...
    source, norms = open_checkpoint(TINY), sorted(n for n in kept if n.endswith("layernorm.weight"))
    smoothed = [n for n in norms if not torch.equal(raw(a, n), raw(source, n))]
    assert smoothed and smoothed == [n for n in norms if not torch.equal(raw(b, n), raw(source, n))], norms
    # ... and the whole output is the uninterrupted run's. It was byte for byte in every run here, but llm-compressor's
    # CPU AWQ is not always reproducible: one of five uninterrupted runs of a 6-text request differed from the others in
    # 171 of 1,700,264 bytes, in the MLPs of layers 1-3 (docs/quantize.md). The bound is 0.1 % of the bytes.
    differing = sum(int((raw(a, n) != raw(b, n)).sum()) for n in a.tensors)
    assert differing <= 0.001 * sum(raw(a, n).numel() for n in a.tensors), differing

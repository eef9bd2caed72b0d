"""AWQ / GPTQ keep the dtype the source stores for every tensor they leave unquantized (seed 003's FP32 vision tower).

Seed 003 (redashes/QwenPaw-Flash-9B-heretic-INT4-AWQ-MTP, ../shared/seeds/003): "Vision Encoder (27 layers) FP32 —
Original precision preserved", quantized with llm-compressor, which builds the model in bfloat16 and would save the
tower as BF16. The base here is the bundled tiny Qwen3.5 with its vision tower (and one norm AWQ smooths, and the
Gated DeltaNet `A_log`) stored FP32, with low bits BF16 cannot hold, so only the source's own bytes compare equal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.writer import TensorData
from mtpforge.diagnosis.doctor import doctor
from tests.conftest import rewrite_shard

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
SMOOTHED = "model.language_model.layers.1.post_attention_layernorm.weight"  # seed 003's only AWQ smoothing


def widened(name: str) -> bool:
    return name.startswith("model.visual.") or name == SMOOTHED or name.endswith(".linear_attn.A_log")


def fp32_base(tmp_path: Path) -> Path:
    """The tiny model with the `widened` tensors stored F32: the BF16 value in the high half, 0x1234 below it
    (rounds back to the same BF16, so the calibrated pass sees the same model)."""
    base = tmp_path / "fp32-base"
    shutil.copytree(TINY, base)

    def widen(tensors: list[TensorData]) -> list[TensorData]:
        return [TensorData(t.name, "F32", t.shape,
                           ((np.frombuffer(t.data or b"", np.uint16).astype(np.uint32) << 16) | 0x1234).tobytes())
                if widened(t.name) else t for t in tensors]

    for shard in base.glob("*.safetensors"):
        rewrite_shard(shard, widen)
    return base


def raw(root: Path, t) -> bytes:  # type: ignore[no-untyped-def]
    with open(root / t.shard, "rb") as f:
        f.seek(t.begin)
        return f.read(t.nbytes)


def check_kept(base: Path, out: Path, *, smoothed: set[str]) -> None:
    """Every tensor the pass left unquantized holds the source's bytes, except the norms AWQ smoothed (`smoothed`):
    those keep the pass's values, in the source's dtype."""
    ckpt, source = open_checkpoint(out), open_checkpoint(base)
    vision = sorted(n for n in ckpt.tensors if n.startswith("model.visual."))
    assert len(vision) == 21 and all(ckpt.tensors[n].dtype == "F32" for n in vision)
    unquantized = [n for n in ckpt.tensors if n in source.tensors]
    assert len(unquantized) > 60
    for name in unquantized:
        assert ckpt.tensors[name].dtype == source.tensors[name].dtype, name
        if name not in smoothed:  # the source's bytes: neither a BF16 round trip nor llm-compressor's 1 + w and back
            assert raw(out, ckpt.tensors[name]) == raw(base, source.tensors[name]), name
    for name in smoothed:  # AWQ folded its smoothing into the norm: its values (BF16 ones, now stored as the source)
        norm = ckpt.tensors[name]
        assert raw(out, norm) != raw(base, source.tensors[name])
        if norm.dtype == "F32":
            values = torch.frombuffer(bytearray(raw(out, norm)), dtype=torch.float32)
            assert torch.equal(values, values.to(torch.bfloat16).float())
    assert any(n.endswith("mlp.gate_proj.weight_packed") for n in ckpt.tensors)  # quantized companions untouched
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(ckpt.tensors[n].nbytes for n in index["weight_map"])
    report = doctor(out)
    assert not [f for f in report.findings if "mismatch" in f.code], report.findings
    assert {f.code for f in report.findings if f.severity == "error"} == set()


@pytest.mark.slow
def test_awq_keeps_an_fp32_vision_tower_byte_for_byte(tmp_path: Path) -> None:
    from mtpforge.publish.recipe import load_recipe
    from mtpforge.quant import quantize
    from mtpforge.quant.calibrated import parse_mappings

    base = fp32_base(tmp_path)
    seed = load_recipe("seed-003-w4a16-mlp-skip-first").doc["quantize"]
    quantize(str(base), str(tmp_path / "awq"), scheme="w4a16", group_size=32, scope="mlp-skip-first", mtp="keep",
             method="awq", awq_mappings=parse_mappings(seed["awq_mappings"]), samples=4, seq_len=64)
    smoothed = {f"model.language_model.layers.{i}.post_attention_layernorm.weight" for i in (1, 2, 3)}  # layer 0: BF16, kept
    check_kept(base, tmp_path / "awq", smoothed=smoothed)


@pytest.mark.slow
def test_gptq_keeps_an_fp32_vision_tower_byte_for_byte(tmp_path: Path) -> None:
    from mtpforge.quant import quantize

    base = fp32_base(tmp_path)
    quantize(str(base), str(tmp_path / "gptq"), scheme="w4a16", group_size=32, scope="mlp-skip-first", mtp="keep",
             method="gptq", samples=4, seq_len=64)
    check_kept(base, tmp_path / "gptq", smoothed=set())

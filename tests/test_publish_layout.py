"""[publish] layouts: each seed recipe's files as its card lists them, from the build's own tensors (hollow Qwen3.6-27B
replica, the tensors the quantize step plans) and, byte for byte, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor
from mtpforge.errors import UsageError
from mtpforge.publish.layout import check_layout, layout_plan
from mtpforge.publish.recipe import load_recipe
from mtpforge.surgery.stage import apply_plan
from mtpforge.testing.replica import make_hollow_replica
from tests.test_plan_serve import hollow_build

TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
GB = 10**9


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hollow_replica(tmp_path_factory.mktemp("layout") / "qwen3.6-27b")


def raw(shard: Path, t) -> bytes:  # type: ignore[no-untyped-def]
    with open(shard, "rb") as f:
        f.seek(t.begin)
        return f.read(t.end - t.begin)


def files_of(plan) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {s.name: s.nbytes for s in plan.written}


def test_seed_001_ships_one_trunk_file_and_the_bf16_head_as_the_second(replica: Path, tmp_path: Path) -> None:
    # Card 001: "model-00001-of-00002.safetensors ~33 GB INT8 quantized base model weights;
    # model-00002-of-00002.safetensors ~850 MB BF16 MTP layer weights; model.safetensors.index.json".
    built = hollow_build(replica, "seed-001-w8a16-bf16-mtp", tmp_path / "int8")
    plan = layout_plan(open_checkpoint(built), load_recipe("seed-001-w8a16-bf16-mtp").publish)
    files = files_of(plan)
    assert list(files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert {n.split(".")[0] for s in plan.written[1:] for n in (t.name for t in s.tensors)} == {"mtp"}
    assert 0.80 * GB < files["model-00002-of-00002.safetensors"] < 0.90 * GB  # "~850 MB"
    assert 30 * GB < files["model-00001-of-00002.safetensors"] < 36 * GB  # "~33 GB" (with the BF16 vision tower)
    index = plan.json_files["model.safetensors.index.json"]
    assert set(index["weight_map"]) == set(open_checkpoint(built).tensors)


def test_seed_004_ships_five_shards_and_an_indexed_mtp_file(replica: Path, tmp_path: Path) -> None:
    # Card 004: "model-{1..5}-of-00005.safetensors - main quantized weights (~18 GiB); mtp.safetensors - BF16 MTP draft
    # head (0.85 GiB), referenced from model.safetensors.index.json".
    built = hollow_build(replica, "seed-004-w4a16-g128", tmp_path / "w4")
    plan = layout_plan(open_checkpoint(built), load_recipe("seed-004-w4a16-g128").publish)
    files = files_of(plan)
    assert list(files) == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)] + ["mtp.safetensors"]
    trunk = [files[f"model-0000{i}-of-00005.safetensors"] for i in range(1, 6)]
    # About equal shards; a tensor is never split, so they differ by at most the largest one (embed_tokens, 2.54 GB).
    largest = max(t.nbytes for s in plan.written for t in s.tensors)
    assert max(trunk) - min(trunk) <= largest and abs(sum(trunk) / 5 - trunk[2]) < 0.1 * sum(trunk) / 5
    assert 0.75 * (1 << 30) < files["mtp.safetensors"] < 0.9 * (1 << 30)
    weight_map = plan.json_files["model.safetensors.index.json"]["weight_map"]
    assert {n for n, f in weight_map.items() if f == "mtp.safetensors"} == {n for n in weight_map if n.startswith("mtp.")}


def test_seed_003_puts_the_vision_tower_and_head_in_visual_mtp(replica: Path) -> None:
    # Card 003: "model.safetensors - quantized text backbone; visual_mtp.safetensors - vision encoder + MTP head;
    # model.safetensors.index.json". The layout of the 9B card, on the 27B replica's tensors.
    plan = layout_plan(open_checkpoint(replica), load_recipe("seed-003-w4a16-mlp-skip-first").publish)
    assert [s.name for s in plan.written] == ["model.safetensors", "visual_mtp.safetensors"]
    side = {t.name.split(".")[0] + "." + t.name.split(".")[1] for t in plan.written[1].tensors}
    assert side == {"mtp.fc", "mtp.layers", "mtp.norm", "mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden",
                    "model.visual"}
    assert not any(t.name.startswith(("mtp.", "model.visual.")) for t in plan.written[0].tensors)


def test_a_layout_moves_tensors_byte_for_byte_and_doctor_accepts_it(tmp_path: Path) -> None:
    # The tiny model stores its head inside model.safetensors: the layout moves it out, as seed 004 ships it.
    out = apply_plan(layout_plan(open_checkpoint(TINY), {"shards": 2, "head": "mtp.safetensors"}), tmp_path / "out")
    before, after = open_checkpoint(TINY), open_checkpoint(out)
    assert sorted(after.headers) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                     "mtp.safetensors"]
    assert set(after.tensors) == set(before.tensors)
    for name, t in before.tensors.items():
        moved = after.tensors[name]
        assert (moved.dtype, moved.shape) == (t.dtype, t.shape)
        assert raw(after.root / after.index.weight_map[name], moved) == raw(TINY / t.shard, t), name
    assert all(after.index.weight_map[n] == "mtp.safetensors" for n in after.tensors if n.startswith("mtp."))
    # doctor sees the same checkpoint: no finding the input does not have (none about files, index or shapes)
    assert [(f.code, f.tensors) for f in doctor(out).findings] == [(f.code, f.tensors) for f in doctor(TINY).findings]
    assert (out / "tokenizer.json").read_bytes() == (TINY / "tokenizer.json").read_bytes()
    assert json.loads((out / "config.json").read_text()) == before.config


@pytest.mark.parametrize(("layout", "error"), [
    ({"shard": 2}, "unknown [publish] keys ['shard']"),
    ({"shards": 0}, "[publish] shards = 0: a count of 1 or more"),
    ({"shards": 2, "shard_size": "5GB"}, "[publish] gives both shards and shard_size"),
    ({"head": "../mtp.safetensors"}, "[publish] head '../mtp.safetensors' is not a plain file name"),
    ({"head": "mtp.bin"}, "[publish] head 'mtp.bin' does not end in .safetensors"),
    ({"shard_name": "model-{part}.safetensors"}, "[publish] shard_name 'model-{part}.safetensors' is not a pattern"),
])
def test_bad_layouts_are_usage_errors(layout: dict, error: str) -> None:
    with pytest.raises(UsageError) as e:
        check_layout(layout)
    assert str(e.value).startswith(error)


def test_a_part_cannot_take_a_trunk_files_name() -> None:
    with pytest.raises(UsageError, match="is also a trunk file"):
        layout_plan(open_checkpoint(TINY), {"shards": 1, "shard_name": "model.safetensors", "head": "model.safetensors"})


def test_an_fp32_vision_tower_stays_fp32_through_quantize_and_layout(tmp_path: Path) -> None:
    # Seed 003 keeps its vision encoder in FP32 ("Original precision preserved") in visual_mtp.safetensors.
    import shutil

    import numpy as np

    from mtpforge.checkpoint.writer import TensorData
    from mtpforge.quant import quantize
    from tests.conftest import rewrite_shard

    base = tmp_path / "fp32-vision"
    shutil.copytree(TINY, base)

    def widen(tensors: list[TensorData]) -> list[TensorData]:  # BF16 -> F32 exactly: the 16 bits become the high half
        return [TensorData(t.name, "F32", t.shape, (np.frombuffer(t.data or b"", np.uint16).astype(np.uint32) << 16).tobytes())
                if t.name.startswith("model.visual.") and t.dtype == "BF16" else t for t in tensors]

    for shard in base.glob("*.safetensors"):
        rewrite_shard(shard, widen)
    quantize(str(base), str(tmp_path / "q"), scheme="w4a16", group_size=128, scope="mlp-skip-first", mtp="keep")
    out = apply_plan(layout_plan(open_checkpoint(tmp_path / "q"), load_recipe("seed-003-w4a16-mlp-skip-first").publish),
                     tmp_path / "out")
    ckpt, stored = open_checkpoint(out), open_checkpoint(base)
    vision = {n: t for n, t in ckpt.tensors.items() if n.startswith("model.visual.")}
    assert vision and {t.dtype for t in vision.values()} == {"F32"}
    assert {ckpt.index.weight_map[n] for n in vision} == {"visual_mtp.safetensors"}
    for name, t in vision.items():
        assert raw(out / "visual_mtp.safetensors", t) == raw(base / stored.tensors[name].shard, stored.tensors[name])
    report = doctor(out)
    errors = {f.code for f in report.findings if f.severity == "error"}
    assert errors <= {f.code for f in doctor(TINY).findings if f.severity == "error"}  # nothing the base does not have
    assert any(f.code == "dtype-cast" and f.severity == "info" for f in report.findings)  # said, not refused

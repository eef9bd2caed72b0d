"""quantize with llm-compressor: RTN word for word as its data-free path writes it; AWQ / GPTQ keep the head and declare it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
IGNORE = ["lm_head", "re:.*visual.*", r"re:.*linear_attn.in_proj_[ab]$"]


def llmcompressor_rtn(out: Path, scheme: str) -> None:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForImageTextToText

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForImageTextToText.from_pretrained(TINY, dtype=torch.bfloat16)
        oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE), output_dir=str(out))


def tensors(path: Path) -> dict:  # type: ignore[type-arg]
    from safetensors.torch import load_file

    out = {}
    for f in path.glob("*.safetensors"):
        out.update(load_file(f))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("scheme", "ours"), [("W4A16", ("w4a16", "128")), ("W4A16_ASYM", ("w4a16-asym", "128")),
                                              ("W8A16", ("w8a16", None))])
def test_rtn_writes_what_llmcompressor_writes(cli, tmp_path: Path, scheme: str, ours: tuple[str, str | None]) -> None:  # type: ignore[no-untyped-def]
    llmcompressor_rtn(tmp_path / "theirs", scheme)
    group = ["--group-size", ours[1]] if ours[1] else []
    assert cli("quantize", str(TINY), "--scheme", ours[0], *group, "--out", str(tmp_path / "ours")).code == 0
    a, b = tensors(tmp_path / "ours"), tensors(tmp_path / "theirs")
    companions = [k for k in a if k.endswith(("weight_packed", "weight_scale", "weight_zero_point"))]
    assert len(companions) >= 50
    differ = [k for k in companions if not torch.equal(a[k], b[k])]
    assert differ == [], differ[:5]


@pytest.mark.slow
def test_awq_keeps_the_head_bf16_declared_and_indexed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "awq"
    r = cli("quantize", str(TINY), "--method", "awq", "--scheme", "w4a16-asym", "--group-size", "32", "--scope", "attention-mlp",
            "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["schema"] == "mtpforge.quantize/1"  # llm-compressor's log stays off stdout
    assert doctor(out).findings == ()  # head ignored, index total_size right: llm-compressor alone leaves both wrong
    ckpt = open_checkpoint(out)
    assert "re:^mtp.*" in ckpt.config["quantization_config"]["ignore"]
    head = [n for n in ckpt.tensors if n.startswith("mtp.")]
    assert len(head) == 15 and all(ckpt.tensors[n].dtype == "BF16" for n in head)
    assert not any(".linear_attn." in n and n.endswith("weight_packed") for n in ckpt.tensors)  # the scope holds
    r = cli("verify", str(out), "--reference", str(TINY), "--max-prompts", "4", "--new-tokens", "32", "--json")
    report = json.loads(r.out)
    assert report["divergence"]["kl_mean_nats"] < 0.05 and report["acceptance"]["acceptance_per_position"][0] > 0.3


@pytest.mark.slow
def test_gptq_with_activation_order_and_text_only(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "gptq"
    (tmp_path / "calib.txt").write_text("\n".join(f"def function_{i}(x):\n    return x * {i}" for i in range(8))
                                        .replace("\n    ", " "))
    r = cli("quantize", str(TINY), "--method", "gptq", "--actorder", "--group-size", "32", "--text-only", "--calibration",
            str(tmp_path / "calib.txt"), "--samples", "8", "--out", str(out))
    assert r.code == 0, r.err
    ckpt = open_checkpoint(out)
    assert ckpt.config["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] == "static"
    assert ckpt.config["language_model_only"] is True and not any(n.startswith("model.visual") for n in ckpt.tensors)
    assert sum(n.startswith("mtp.") for n in ckpt.tensors) == 15 and doctor(out).ok
    assert not list(tmp_path.glob(".*calibrating"))  # the staging directory is gone


@pytest.mark.parametrize(("args", "error", "hint"), [
    (("--method", "gptq", "--scheme", "nvfp4a16"), "nvfp4a16 is written data-free here; --method gptq runs INT schemes",
     "--method rtn"),
    (("--actorder",), "--actorder orders GPTQ's columns; RTN has no order", "--method gptq --actorder"),
])
def test_calibrated_requests_that_cannot_work_are_usage_errors(  # type: ignore[no-untyped-def]
        cli, tmp_path: Path, args: tuple[str, ...], error: str, hint: str) -> None:
    r = cli("quantize", str(TINY), *args, "--out", str(tmp_path / "q"))
    assert r.code == 2 and not (tmp_path / "q").exists()
    assert f"Error: {error}\nhint: {hint}\n" in r.err

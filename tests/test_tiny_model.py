"""The bundled tiny trained model: its head drafts well, broken heads collapse,
an INT4 trunk diverges measurably while its head still drafts, a grafted head
restores drafting, and vLLM counts the same acceptance as the reference runtime."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from mtpforge.checkpoint.writer import TensorData  # noqa: E402
from mtpforge.diagnosis.doctor import doctor  # noqa: E402
from mtpforge.formats.values import decode, encode  # noqa: E402
from mtpforge.verify import verify  # noqa: E402

from .conftest import rewrite_shard  # noqa: E402
from .engine import engine_available  # noqa: E402

MODELS = Path(str(resources.files("mtpforge") / "models"))
BASE, FINETUNE = MODELS / "tiny-qwen3.5", MODELS / "tiny-qwen3.5-finetune"
RUN: dict[str, Any] = {"k": 3, "new_tokens": 48, "max_prompts": 8}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_report() -> dict[str, Any]:
    return verify(str(BASE), **RUN).to_dict()


def test_bundled_models_are_small_and_say_what_they_are() -> None:
    for model in (BASE, FINETUNE):
        assert sum(f.stat().st_size for f in model.iterdir()) < 10_000_000
        assert "scripts/train_tiny.py" in (model / "README.md").read_text() or model == FINETUNE
    assert doctor(BASE).findings == ()
    assert [f.code for f in doctor(FINETUNE).findings] == ["mtp-missing"]


def test_the_bundled_head_drafts_well(base_report: dict[str, Any]) -> None:
    rates = base_report["acceptance"]["acceptance_per_position"]
    assert base_report["verdict"] == "ok" and rates[0] >= 0.5, rates
    assert rates[0] >= rates[1] >= rates[2]  # each position needs all before it


def _copy_with(tmp_path: Path, change: Callable[[list[TensorData]], list[TensorData]]) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(BASE, out)
    rewrite_shard(out / "model.safetensors", change)
    return out


def _map(names: Callable[[str], bool], fn: Callable[[Any], Any]) -> Callable[[list[TensorData]], list[TensorData]]:
    return lambda ts: [TensorData(t.name, t.dtype, t.shape, encode(t.dtype, fn(decode(t.dtype, t.shape, t.data))))
                       if names(t.name) else t for t in ts]


def test_a_head_whose_norm_offset_is_lost_collapses(tmp_path: Path, base_report: dict[str, Any]) -> None:
    # HF stores w and engines compute x * (1 + w); a converter that drops the offset
    # makes the head compute x * w (vllm-mlx #400, MTPLX #511): shift -1
    broken = _copy_with(tmp_path, _map(lambda n: n.startswith("mtp.") and "norm" in n, lambda v: v - 1.0))
    assert "mtp-norm-convention" in {f.code for f in doctor(broken).findings}
    report = verify(str(broken), **RUN)
    assert report.verdict == "collapsed", report.acceptance


def test_a_head_shifted_twice_drafts_clearly_worse(tmp_path: Path, base_report: dict[str, Any]) -> None:
    # +1 (1 + w applied to an already absolute weight): doctor flags it; on this tiny model, whose
    # offsets are small, it is a near-uniform x2 that the next RMSNorm partly absorbs, so it degrades
    broken = _copy_with(tmp_path, _map(lambda n: n.startswith("mtp.") and "norm" in n, lambda v: v + 1.0))
    assert "mtp-norm-convention" in {f.code for f in doctor(broken).findings}
    report = verify(str(broken), reference=str(BASE), **RUN)
    shifted, base = report.acceptance["acceptance_per_position"][0], base_report["acceptance"]["acceptance_per_position"][0]
    assert report.verdict == "degraded" and shifted < base - 0.10, (shifted, base)


def test_a_head_with_swapped_concatenation_collapses(tmp_path: Path) -> None:
    def swap(v: Any) -> Any:  # fc reads [hidden, embedding] instead of [embedding, hidden]
        half = v.shape[1] // 2
        return v[:, list(range(half, 2 * half)) + list(range(half))]

    broken = _copy_with(tmp_path, _map(lambda n: n == "mtp.fc.weight", swap))
    assert doctor(broken).findings == ()  # statically nothing is wrong: only measuring finds it
    report = verify(str(broken), **RUN)
    assert report.verdict == "collapsed", report.acceptance


def test_an_int4_trunk_diverges_but_its_head_still_drafts(tmp_path: Path, base_report: dict[str, Any]) -> None:
    from mtpforge.quant import quantize

    quantize(str(BASE), str(tmp_path / "w4a16"), scheme="w4a16", group_size=32)
    report = verify(str(tmp_path / "w4a16"), reference=str(BASE), **RUN).to_dict()
    floor = verify(str(BASE), reference=str(BASE), **RUN).to_dict()["divergence"]["kl_mean_nats"]
    kld = report["divergence"]["kl_mean_nats"]
    assert floor == 0.0 and kld > 1e-3, kld  # well above the rounding floor of the same weights
    ours, bf16 = report["acceptance"]["acceptance_per_position"][0], base_report["acceptance"]["acceptance_per_position"][0]
    assert abs(ours - bf16) <= 0.10, (ours, bf16)
    (tmp_path / "figures.json").write_text(json.dumps({"kld": report["divergence"], "acceptance": report["acceptance"]}))


def test_graft_restores_drafting_on_the_headless_finetune(tmp_path: Path, base_report: dict[str, Any]) -> None:
    from mtpforge.surgery.graft import graft

    before = verify(str(FINETUNE), **RUN)
    assert before.verdict == "collapsed" and before.acceptance is None
    graft(str(FINETUNE), str(BASE), str(tmp_path / "grafted"))
    after = verify(str(tmp_path / "grafted"), **RUN)
    assert after.verdict == "ok" and after.acceptance["acceptance_per_position"][0] >= 0.3, after.acceptance


@pytest.mark.engine
@pytest.mark.skipif(not engine_available(), reason="no vLLM engine venv (make engine-env)")
def test_vllm_counts_the_acceptance_the_reference_runtime_computes(cli: Any) -> None:
    from .engine import ENGINE_PYTHON

    r = cli("verify", str(BASE), "--k", "3", "--new-tokens", "48", "--max-prompts", "8",
            "--engine-python", str(ENGINE_PYTHON), "--json")
    assert r.code == 0, r.err
    report = r.json()
    ours = report["acceptance"]["acceptance_per_position"]
    engine = report["engine_acceptance"]["acceptance_per_position"]
    assert report["engine_acceptance"]["drafts"] > 50
    for j, (a, b) in enumerate(zip(ours, engine, strict=True)):
        assert abs(a - b) <= 0.05, f"position {j}: reference {a:.3f} vs vLLM {b:.3f} ({ours} vs {engine})"


def test_verify_cli_contract(tmp_path: Path, cli: Any) -> None:
    chart = tmp_path / "acceptance.png"
    ok = cli("verify", str(BASE), "--max-prompts", "4", "--json", "--chart", str(chart))
    assert ok.code == 0 and ok.json()["schema"] == "mtpforge.verify/1" and ok.json()["verdict"] == "ok"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    strict = cli("verify", str(BASE), "--max-prompts", "4", "--min-acceptance", "0.99")
    assert strict.code == 1 and "--min-acceptance 0.99" in strict.out
    collapsed = cli("verify", str(FINETUNE), "--max-prompts", "2")
    assert collapsed.code == 1 and "COLLAPSED" in collapsed.out and "no MTP head" in collapsed.out
    bad = cli("verify", str(BASE), "--prompts", str(tmp_path / "missing.txt"))
    assert bad.code == 2 and "cannot read" in bad.err
    assert f"Error: --prompts {tmp_path / 'missing.txt'}: cannot read: No such file or directory\n" in bad.err

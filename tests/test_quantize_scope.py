"""quantize: NVFP4 bytes as compressed-tensors writes them, the seeds' scopes, whole fused groups, the MTP policy, --text-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor

torch = pytest.importorskip("torch")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


def quantized_modules(path: Path) -> set[str]:
    ckpt = open_checkpoint(path)
    return {n.rsplit(".", 1)[0] for n, w in ckpt.stored.items() if w.quantized}


def test_nvfp4_bytes_are_compressed_tensors_own(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.quant_scheme import NVFP4A16
    from safetensors.torch import load_file

    out = tmp_path / "nvfp4"
    assert cli("quantize", str(TINY), "--scheme", "nvfp4a16", "--out", str(out)).code == 0
    assert doctor(out).ok
    stored, base = load_file(out / "model.safetensors"), load_file(TINY / "model.safetensors")
    args = NVFP4A16["weights"]
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    modules = sorted(n[: -len(".weight_packed")] for n in stored if n.endswith(".weight_packed"))
    assert len(modules) == 25
    for m in modules:
        state = {k: stored[f"{m}.{k}"] for k in ("weight_packed", "weight_scale", "weight_global_scale")}
        theirs = NVFP4PackedCompressor.decompress(state, scheme)["weight"]
        # What compressed-tensors' QDQ makes of the BF16 weight with the stored scales: the stored bytes must decode
        # to exactly that.
        qdq = fake_quantize(base[f"{m}.weight"], state["weight_scale"].to(torch.bfloat16),
                            torch.zeros_like(state["weight_scale"]), args, global_scale=state["weight_global_scale"])
        assert torch.equal(theirs.to(torch.bfloat16), qdq.to(torch.bfloat16)), m
        assert torch.equal(torch.signbit(theirs), torch.signbit(qdq)), m  # E2M1 -0.0 keeps its sign
    # Engines fuse q/k/v, gate/up and in_proj_qkv/z: each fused layer has one global scale.
    for layer, parts in (("model.language_model.layers.3.self_attn", ("q_proj", "k_proj", "v_proj")),
                         ("model.language_model.layers.0.mlp", ("gate_proj", "up_proj")),
                         ("model.language_model.layers.0.linear_attn", ("in_proj_qkv", "in_proj_z"))):
        scales = {float(stored[f"{layer}.{p}.weight_global_scale"]) for p in parts}
        assert len(scales) == 1, (layer, scales)
    amax = float(base["model.language_model.layers.3.self_attn.o_proj.weight"].float().abs().max())
    global_scale = float(stored["model.language_model.layers.3.self_attn.o_proj.weight_global_scale"])
    assert global_scale == pytest.approx(448 * 6 / amax, rel=1e-6)


@pytest.mark.parametrize(("scope", "quantized", "kept"), [
    ("attention-mlp", ("self_attn.q_proj", "mlp.down_proj"), ("linear_attn.in_proj_qkv", "linear_attn.out_proj")),
    ("mlp-skip-first", ("layers.1.mlp.gate_proj", "layers.3.mlp.down_proj"), ("layers.0.mlp.", "self_attn.", "linear_attn.")),
    ("all", ("linear_attn.in_proj_qkv", "linear_attn.out_proj", "self_attn.o_proj", "layers.0.mlp.up_proj"),
     ("in_proj_a", "in_proj_b")),
])
def test_scopes_quantize_what_the_seeds_quantize(cli, tmp_path: Path, scope: str,  # type: ignore[no-untyped-def]
                                                 quantized: tuple[str, ...], kept: tuple[str, ...]) -> None:
    out = tmp_path / scope
    assert cli("quantize", str(TINY), "--scope", scope, "--group-size", "32", "--out", str(out)).code == 0
    mods = quantized_modules(out)
    assert all(any(q in m for m in mods) for q in quantized), mods
    assert not any(k in m for m in mods for k in kept), mods
    assert not any(m.startswith(("mtp.", "model.visual")) for m in mods)
    assert doctor(out).ok  # the ignore list names exactly what was kept


def test_a_partly_selected_fused_group_stays_whole(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("quantize", str(TINY), "--exclude", r".*layers\.2\.mlp\.up_proj", "--out", str(tmp_path / "q"), "--json")
    assert r.code == 0
    mods = quantized_modules(tmp_path / "q")
    assert "model.language_model.layers.2.mlp.gate_proj" not in mods and "model.language_model.layers.2.mlp.down_proj" in mods
    assert any("gate_up_proj whole" in a for a in json.loads(r.out)["actions"])
    assert doctor(tmp_path / "q").ok


@pytest.mark.parametrize(("args", "error", "hint"), [
    (("--include", "nothing\\.matches"), "--include 'nothing\\\\.matches' matches no Linear layer of this checkpoint",
     "patterns match module paths in full, e.g. 'model\\.language_model\\.layers\\.0\\..*'"),
    (("--exclude", "(unclosed"),
     "--exclude '(unclosed' is not a regular expression: missing ), unterminated subpattern at position 0", None),
    (("--scheme", "nvfp4a16", "--group-size", "32"), "NVFP4 uses groups of 16, not 32", "leave --group-size out for nvfp4a16"),
])
def test_bad_scope_requests_are_usage_errors(  # type: ignore[no-untyped-def]
        cli, tmp_path: Path, args: tuple[str, ...], error: str, hint: str | None) -> None:
    r = cli("quantize", str(TINY), *args, "--out", str(tmp_path / "q"))
    assert r.code == 2 and not (tmp_path / "q").exists()
    assert f"Error: {error}\n" in r.err
    assert (f"hint: {hint}\n" in r.err) if hint else "hint:" not in r.err


@pytest.mark.slow
def test_mtp_quantize_quantizes_the_head_layer_and_it_still_drafts(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "q"
    assert cli("quantize", str(TINY), "--mtp", "quantize", "--group-size", "32", "--out", str(out)).code == 0
    mods = quantized_modules(out)
    assert {"mtp.layers.0.self_attn.q_proj", "mtp.layers.0.mlp.down_proj"} <= mods and "mtp.fc" not in mods
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "re:^mtp.*" not in ignore and "mtp.fc" in ignore
    assert {f.code for f in doctor(out).findings} == {"mtp-quantized"}  # a warning: measured below, not forbidden
    r = cli("verify", str(out), "--reference", str(TINY), "--max-prompts", "4", "--new-tokens", "32", "--json")
    assert r.code == 0
    assert json.loads(r.out)["acceptance"]["acceptance_per_position"][0] > 0.3


def test_text_only_drops_the_tower_in_the_same_pass(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "q"
    assert cli("quantize", str(TINY), "--text-only", "--out", str(out)).code == 0
    ckpt = open_checkpoint(out)
    assert not any(n.startswith("model.visual") for n in ckpt.tensors)
    assert ckpt.config["language_model_only"] is True
    assert any(n.startswith("mtp.") for n in ckpt.tensors)  # the head is carried
    assert doctor(out).ok


@pytest.mark.slow
def test_nvfp4_with_fp4_activations_in_both_layouts_agree_through_the_modelopt_converter(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter
    from safetensors.torch import load_file

    ct, mo = tmp_path / "ct", tmp_path / "modelopt"
    assert cli("quantize", str(TINY), "--scheme", "nvfp4", "--out", str(ct)).code == 0
    assert cli("quantize", str(TINY), "--scheme", "nvfp4", "--format", "modelopt", "--out", str(mo)).code == 0
    assert doctor(ct).ok and doctor(mo).ok
    acts = json.loads((ct / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["input_activations"]
    assert acts["type"] == "float" and acts["num_bits"] == 4 and acts["strategy"] == "tensor_group"
    assert json.loads((mo / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "NVFP4"
    ours, theirs = load_file(ct / "model.safetensors"), load_file(mo / "model.safetensors")
    modules = sorted(k[: -len(".weight_scale_2")] for k in theirs if k.endswith(".weight_scale_2"))
    converted = ModelOptNvfp4Converter(targets=modules).process(dict(theirs))
    quantized = [k for k in ours if k.endswith("input_global_scale")]
    assert len(quantized) == 25
    for name, tensor in ours.items():
        if name.endswith("global_scale"):  # modelopt stores their reciprocals: one float32 rounding each way
            torch.testing.assert_close(converted[name].reshape(tensor.shape), tensor, rtol=2**-23, atol=0)
        else:  # the FP4 codes, the FP8 group scales and every unquantized tensor: bit for bit
            assert torch.equal(converted[name], tensor), name
    # q/k/v read the same input, so their input scales agree; and each is 448 * 6 / the largest |input| seen.
    layer = "model.language_model.layers.3.self_attn"
    assert len({float(ours[f"{layer}.{p}.input_global_scale"]) for p in ("q_proj", "k_proj", "v_proj")}) == 1
    assert all(0 < float(ours[k]) < 448 * 6 / 1e-3 for k in quantized)
    r = cli("verify", str(mo), "--reference", str(TINY), "--max-prompts", "4", "--new-tokens", "32", "--json")
    assert r.code == 0 and json.loads(r.out)["divergence"]["kl_mean_nats"] < 0.1


@pytest.mark.parametrize(("args", "error", "hint"), [
    (("--scheme", "nvfp4a16", "--format", "modelopt"), "--format modelopt is not written for nvfp4a16",
     "modelopt holds NVFP4 with FP4 activations only: --scheme nvfp4 --format modelopt"),
    (("--scheme", "nvfp4", "--mtp", "quantize"),
     "--mtp quantize with FP4 activations: the head's input ranges cannot be calibrated (transformers builds no MTP module)",
     "--mtp keep, or --scheme nvfp4a16"),
])
def test_nvfp4_requests_that_cannot_work_are_usage_errors(  # type: ignore[no-untyped-def]
        cli, tmp_path: Path, args: tuple[str, ...], error: str, hint: str) -> None:
    r = cli("quantize", str(TINY), *args, "--out", str(tmp_path / "q"))
    assert r.code == 2 and not (tmp_path / "q").exists()
    assert f"Error: {error}\nhint: {hint}\n" in r.err

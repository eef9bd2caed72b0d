"""The MTP head calibrated on its real inputs (GPTQ through llm-compressor's own pieces), observers, calibration options.

The head's Linears get GPTQ on the inputs the quantized trunk gives them (issue 15); the fixture is the bundled tiny
Qwen3.5 (a trained head), whose layout is the real Qwen3.6-27B's (src/mtpforge/models/tiny-qwen3.5/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
MODELS = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models"
TINY = MODELS / "tiny-qwen3.5"
SEED_000 = ("--scheme", "w4a16-asym", "--group-size", "32", "--scope", "attention-mlp", "--mtp", "quantize")


def weights_config(observer: str = "minmax") -> dict:  # type: ignore[type-arg]
    from mtpforge.formats.schemes import SCHEMES

    return {**SCHEMES["w4a16-asym"].weights_config(32), "observer": observer}


def dequantized(tensors: dict) -> torch.Tensor:  # type: ignore[type-arg]
    from mtpforge.formats.dequant import dequantize_int

    out, inp = tensors["weight_shape"].tolist()
    return dequantize_int(tensors["weight_packed"], tensors["weight_scale"], tensors["weight_zero_point"], bits=4,
                          shape=(out, inp)).float()


def test_gptq_on_a_weight_beats_rtn_on_the_inputs_it_saw_and_stores_what_rtn_stores() -> None:
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian

    from mtpforge.formats.schemes import SCHEMES
    from mtpforge.quant.head_gptq import gptq_int_tensors
    from mtpforge.quant.observers import observed_int_tensors

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(96, 256, generator=g) * 0.02).to(torch.bfloat16)
    # Correlated activations (few directions carry most of the energy, as hidden states do): what GPTQ's error feedback uses.
    x = torch.randn(2048, 24, generator=g) @ torch.randn(24, 256, generator=g) + 0.1 * torch.randn(2048, 256, generator=g)
    linear = torch.nn.Linear(256, 96, bias=False)
    hessian, count = accumulate_hessian(x[None], linear, make_empty_hessian(linear), torch.zeros(()))
    gptq, loss = gptq_int_tensors(w, hessian / count, weights_config())
    rtn = observed_int_tensors(w, weights_config())
    error = {name: float(((x @ (w.float() - dequantized(t)).T) ** 2).mean()) for name, t in (("gptq", gptq), ("rtn", rtn))}
    assert error["gptq"] < 0.8 * error["rtn"], error
    assert loss > 0
    stored = SCHEMES["w4a16-asym"].companions(96, 256, 32, scale_dtype="BF16")
    assert {k: (str(v.dtype), tuple(v.shape)) for k, v in gptq.items()} == \
        {k: (str(rtn[k].dtype), tuple(rtn[k].shape)) for k in stored}
    assert torch.equal(gptq["weight_scale"], rtn["weight_scale"])  # the same observer grid: GPTQ moves the integers only


def test_the_mse_observer_clips_outliers_minmax_keeps() -> None:
    from mtpforge.formats.int_affine import quantize_int
    from mtpforge.quant.observers import observed_int_tensors

    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * 0.02
    w[:, ::32] *= 12  # one outlier per group widens min-max's range for the other 31 values
    w = w.to(torch.bfloat16)
    minmax = observed_int_tensors(w, weights_config("minmax"))
    assert all(torch.equal(minmax[k], v) for k, v in quantize_int(w, bits=4, group_size=32, symmetric=False).items())
    mse = observed_int_tensors(w, weights_config("mse"))
    err = {k: float(((w.float() - dequantized(t)) ** 2).mean()) for k, t in (("minmax", minmax), ("mse", mse))}
    assert err["mse"] < err["minmax"], err


def test_the_observer_is_recorded_in_the_config(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mtpforge.quant.plan import quant_plan

    plan = quant_plan(TINY, scheme="w4a16-asym", group_size=32, scope="attention-mlp", mtp="quantize", mtp_method="gptq",
                      observer="mse")
    weights = plan.write.json_files["config.json"]["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert weights["observer"] == "mse" and plan.weights["observer"] == "mse"  # what llm-compressor and the head are given
    r = cli("quantize", str(TINY), *SEED_000, "--observer", "mse", "--mtp-method", "gptq", "--dry-run", "--json",
            "--out", str(tmp_path / "q"))
    assert r.code == 0, r.err
    actions = json.loads(r.out)["actions"]
    assert any("mse observer" in a for a in actions) and any("GPTQ on the inputs" in a for a in actions)


@pytest.mark.slow
def test_head_gptq_on_captured_inputs_writes_a_loadable_quantized_head(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mtpforge.reference.model import load_reference

    rtn, gptq = tmp_path / "rtn", tmp_path / "gptq"
    (tmp_path / "calib.json").write_text(json.dumps(json.loads((MODELS / "prompts.json").read_text())["prompts"][11:]))
    for out, method in ((rtn, "rtn"), (gptq, "gptq")):
        r = cli("quantize", str(TINY), *SEED_000, "--mtp-method", method, "--calibration", str(tmp_path / "calib.json"),
                "--out", str(out))
        assert r.code == 0, r.err
    assert doctor(gptq).ok
    a, b = open_checkpoint(rtn), open_checkpoint(gptq)
    qc = b.config["quantization_config"]
    assert "re:^mtp.*" not in qc["ignore"] and "mtp.fc" in qc["ignore"]  # engines build the head quantized, fc BF16
    head = sorted(n for n in b.tensors if n.startswith("mtp.layers.0.") and n.endswith("weight_packed"))
    assert len(head) == 7 and b.tensors["mtp.fc.weight"].dtype == "BF16"
    # The head pass touches the head only: every trunk tensor is byte for byte the single-pass RTN output's.
    trunk = [n for n in a.tensors if not n.startswith("mtp.")]
    from mtpforge.checkpoint.tensors import read_tensor

    assert all(torch.equal(read_tensor(a, a.tensors[n]), read_tensor(b, b.tensors[n])) for n in trunk)
    assert any(not torch.equal(read_tensor(a, a.tensors[n]), read_tensor(b, b.tensors[n])) for n in head)
    # On prompts it was not calibrated on, the GPTQ head's first draft is closer to the BF16 head's than RTN's is.
    prompts = json.loads((MODELS / "prompts.json").read_text())["prompts"][:11]
    from mtpforge.prompts import tokenize

    ids = tokenize(TINY, prompts, 96)
    bf16 = load_reference(TINY)
    kld = {}
    for name, path in (("rtn", rtn), ("gptq", gptq)):
        model = load_reference(path)
        total, count = 0.0, 0
        with torch.no_grad():
            for seq in ids:
                t = torch.tensor([seq])
                hidden, _ = model.trunk_forward(t)
                pos = torch.arange(t.shape[1] - 1)[None]
                p = torch.log_softmax(model.logits(bf16.head(model.embed(t[:, 1:]), hidden[:, :-1], pos)), -1)
                q = torch.log_softmax(model.logits(model.head(model.embed(t[:, 1:]), hidden[:, :-1], pos)), -1)
                total, count = total + float((p.exp() * (p - q)).sum()), count + t.shape[1] - 1
        kld[name] = total / count
    assert kld["gptq"] < kld["rtn"], kld


def headless_copy(tmp_path: Path) -> Path:
    """The tiny base without its tokenizer files (a base as some finetunes ship it)."""
    base = tmp_path / "no-tokenizer"
    base.mkdir()
    for f in TINY.iterdir():
        if not f.name.startswith("tokenizer"):
            shutil.copy(f, base / f.name)
    return base


@pytest.mark.parametrize("args", [("--method", "awq"), ("--method", "gptq"), ("--scheme", "nvfp4"),
                                  ("--mtp", "quantize", "--mtp-method", "gptq")])
def test_a_base_without_tokenizer_is_refused_before_any_work(cli, tmp_path: Path, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    base = headless_copy(tmp_path)
    r = cli("quantize", str(base), *args, "--out", str(tmp_path / "q"))
    assert r.code == 2, r.err
    assert f"calibrates on text, and {base} ships no tokenizer (tokenizer.json / tokenizer.model / vocab.json)" in r.err
    assert "hint: copy the tokenizer files" in r.err and not (tmp_path / "q").exists()
    assert not list(tmp_path.glob(".q.*"))  # no scratch left: nothing started


@pytest.mark.parametrize(("args", "error", "hint"), [
    (("--mtp-method", "gptq"), "--mtp-method gptq calibrates a quantized head; --mtp keep keeps it as stored",
     "--mtp quantize --mtp-method gptq"),
    (("--scheme", "nvfp4a16", "--observer", "mse"), "--observer mse run INT schemes; nvfp4a16 is written data-free",
     "--scheme w4a16-asym (or w4a16, w8a16...), or leave the option out"),
    (("--method", "gptq", "--awq-mapping", "re:.*norm$=re:.*gate_proj$"), "AWQ mappings smooth layers for --method awq, not gptq",
     "--method awq, or drop the mappings"),
    (("--method", "awq", "--awq-mapping", "re:.*norm$"), "AWQ mapping 're:.*norm$' is not SMOOTH=BALANCE,...",
     "e.g. 're:.*post_attention_layernorm$=re:.*gate_proj$,re:.*up_proj$'"),
])
def test_calibration_requests_that_cannot_work_are_usage_errors(  # type: ignore[no-untyped-def]
        cli, tmp_path: Path, args: tuple[str, ...], error: str, hint: str) -> None:
    r = cli("quantize", str(TINY), *args, "--out", str(tmp_path / "q"))
    assert r.code == 2 and not (tmp_path / "q").exists()
    assert f"Error: {error}" in r.err and f"hint: {hint}" in r.err, r.err


def test_the_seed_recipes_carry_their_cards_calibration() -> None:
    from mtpforge.publish.recipe import load_recipe

    s000 = load_recipe("seed-000-w4a16-g32-asym-mtp-quantized").quantize_options()
    assert (s000["method"], s000["observer"], s000["mtp"], s000["mtp_method"], s000["group_size"], s000["scheme"]) == \
        ("awq", "mse", "quantize", "gptq", 32, "w4a16-asym")
    s003 = load_recipe("seed-003-w4a16-mlp-skip-first").quantize_options()
    assert s003["awq_mappings"] == [("re:.*post_attention_layernorm$", ["re:.*gate_proj$", "re:.*up_proj$"])]
    s004 = load_recipe("seed-004-w4a16-g128").quantize_options()
    assert s004["chat_template"] is True and s004["actorder"] is True and s004["method"] == "gptq"


def test_calibration_text_through_the_chat_template(tmp_path: Path) -> None:
    from mtpforge.quant.calibration_data import Calibration, token_ids

    (tmp_path / "c.txt").write_text("hello there\nsecond text\n")
    plain = token_ids(TINY, Calibration(str(tmp_path / "c.txt"), samples=1))
    chat = token_ids(TINY, Calibration(str(tmp_path / "c.txt"), samples=1, chat_template=True))
    assert len(plain) == 1 and len(chat[0]) > len(plain[0])  # the template's role markers around the same text
    short = token_ids(TINY, Calibration(str(tmp_path / "c.txt"), seq_len=2))
    assert [len(ids) for ids in short] == [2, 2]

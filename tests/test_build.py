"""build: every seed recipe on the bundled tiny model, end to end; resumable; loud on failure."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor
from mtpforge.publish.build import bundled_recipes

MODELS = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models"
BASE, FINETUNE = MODELS / "tiny-qwen3.5", MODELS / "tiny-qwen3.5-finetune"


def load_in_transformers(path: Path):  # type: ignore[no-untyped-def]
    import torch
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return transformers.AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True, dtype=torch.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(bundled_recipes()))
def test_each_seed_recipe_builds_a_checkpoint_that_passes(cli, tmp_path: Path, recipe: str) -> None:  # type: ignore[no-untyped-def]
    # Seed 000 is the tmax case: a finetune without a head, grafted from its base before quantizing.
    base, donor = (FINETUNE, ["--donor", str(BASE)]) if recipe.startswith("seed-000") else (BASE, [])
    out = tmp_path / "out"
    r = cli("build", recipe, "--base", str(base), "--out", str(out), "--json", *donor)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    layout = json.loads((out / "mtpforge-build.json").read_text())["recipe"].get("publish", {})
    assert [s["step"] for s in report["steps"]][-3:] == ["layout" if layout else "quantize", "doctor", "card"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    expected = {"seed-001": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                "seed-003": ["model.safetensors", "visual_mtp.safetensors"],
                "seed-004": [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)] + ["mtp.safetensors"]}
    assert shards == expected.get(recipe[:8], shards)  # the card's files (tests/test_publish_layout.py: at full scale)
    assert doctor(out).ok and not (tmp_path / "out.build").exists()
    ckpt = open_checkpoint(out)
    assert any(n.startswith("mtp.") for n in ckpt.tensors)  # never lose the head
    recipe_doc = json.loads((out / "mtpforge-build.json").read_text())["recipe"]
    assert (ckpt.config.get("language_model_only") is True) == recipe_doc.get("strip", {}).get("vision", False)
    pos0 = report["verify"]["acceptance"]["acceptance_per_position"][0]
    assert pos0 >= recipe_doc["verify"]["min_acceptance"]
    assert report["verify"]["divergence"]["kl_mean_nats"] <= recipe_doc["verify"]["max_kld"]
    assert f"| 1 | {100 * pos0:.1f} % |" in (out / "README.md").read_text()
    # transformers has no modelopt reader (test_quantize_scope converts it instead), and reads GPTQ (seed 004) only
    # through optimum / gptqmodel, which mtpforge does not install (test_gptq_output checks it against vLLM instead)
    if not (out / "hf_quant_config.json").exists() and not (out / "quantize_config.json").exists():
        _model, info = load_in_transformers(out)
        assert not info["unexpected_keys"] and all(k.startswith("model.visual.") for k in info["missing_keys"])
    (tmp_path / "figures.json").write_text(json.dumps({"recipe": recipe, "verify": report["verify"]}))


@pytest.mark.slow
def test_a_failed_build_keeps_its_work_and_resumes(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    r = cli("build", "seed-004-w4a16-g128", "--base", str(BASE), "--out", str(out), "--min-acceptance", "0.99")
    assert r.code == 1 and "acceptance" in r.err and not out.exists()
    assert re.search(r"Error: verify: \w+; [^\n]*position-0 acceptance 0\.\d{3} < --min-acceptance 0\.99\n", r.err), r.err
    assert f"hint: the work so far is kept in {tmp_path / 'out.build'}; a rerun resumes there\n" in r.err
    assert (tmp_path / "out.build" / "quantize" / "model.safetensors").is_file()
    r = cli("build", "seed-004-w4a16-g128", "--base", str(BASE), "--out", str(out), "--json")
    assert r.code == 0, r.err
    steps = json.loads(r.out)["steps"]
    assert {"step": "quantize", "reused": True} in steps and out.is_dir() and not (tmp_path / "out.build").exists()


def test_bad_recipes_and_outputs_are_usage_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    for text, message in (('[quantize]\nmethod = "smoothquant"\n', "unknown method"),
                          ('[quantize]\nbits = 4\n', "unknown [quantize] keys"),
                          ("[nonsense]\n", "unknown or malformed"), ("name = \n", "bad.toml")):
        bad.write_text(text)
        r = cli("build", str(bad), "--base", str(BASE), "--out", str(tmp_path / "o"))
        assert r.code == 2 and message in r.err, (text, r.err)
    (tmp_path / "exists").mkdir()
    r = cli("build", "seed-004-w4a16-g128", "--base", str(BASE), "--out", str(tmp_path / "exists"))
    assert r.code == 2
    assert r.err.endswith(f"Error: {tmp_path / 'exists'} exists\n"
                          "hint: choose a new --out; build never overwrites a finished build\n")
    r = cli("build", "seed-000-w4a16-g32-asym-mtp-quantized", "--base", str(FINETUNE), "--out", str(tmp_path / "o"),
            "--donor", str(tmp_path / "nowhere"))
    # A donor that is not there is bad input (exit 3), named in the message; nothing is published.
    assert r.code == 3 and not (tmp_path / "o").exists()
    nowhere = str(tmp_path / "nowhere")
    assert f"Error: donor {nowhere!r} is neither a local directory nor a hub repository id (org/name)\n" in r.err


def test_a_modelopt_build_names_its_real_producer(tmp_path: Path) -> None:
    # Seed 002's card names "nvidia-modelopt 0.43.0", the tool it ran; mtpforge writes the format itself, so the files
    # say mtpforge and its installed version (never a modelopt release that did not run).
    from importlib.metadata import version

    from mtpforge.publish.recipe import load_recipe
    from mtpforge.quant import quantize

    plan = quantize(str(BASE), str(tmp_path / "out"), dry_run=True, **load_recipe("seed-002-nvfp4-text-mtp").quantize_options())
    producer = {"name": "mtpforge", "version": version("mtpforge")}
    assert plan.json_files["hf_quant_config.json"]["producer"] == producer
    assert plan.json_files["config.json"]["quantization_config"]["producer"] == producer


FIXED_TEMPLATE = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                  "{%- for tool_call in m.tool_calls or [] %}<tool_call>\n<function={{ tool_call.name }}>\n</function>\n"
                  "</tool_call>{%- endfor %}<|im_end|>\n{%- endfor %}")


def test_the_chat_template_step_ships_the_recipes_template_and_only_it(tmp_path: Path) -> None:
    import os

    from mtpforge.engine.parsers import chat_template, tool_call_format
    from mtpforge.publish.template import apply_template, read_template

    out = tmp_path / "out"
    out.mkdir()
    for f in BASE.iterdir():  # as a build step holds them: hard links to the base's files
        os.link(f, out / f.name)
    (tmp_path / "t.json").write_text(json.dumps({"chat_template": "{{ old }}", "model_max_length": 4096}))
    os.replace(tmp_path / "t.json", out / "tokenizer_config.json")
    (tmp_path / "v9.jinja").write_text(FIXED_TEMPLATE)
    base_files = {f.name: f.read_bytes() for f in BASE.iterdir()}

    apply_template(out, read_template(tmp_path / "v9.jinja"))
    assert (out / "chat_template.jinja").read_text() == FIXED_TEMPLATE
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert chat_template(out) == FIXED_TEMPLATE and tool_call_format(out) == "xml"  # serve picks qwen3_xml from it
    assert {f.name: f.read_bytes() for f in BASE.iterdir()} == base_files  # never written through a link


def test_a_broken_chat_template_stops_the_build_before_any_work(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "broken.jinja").write_text("line one\n{% for m in messages %}{{ m.content }}\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[quantize]\nscheme = "w8a16"\n\n[publish]\nchat_template = "broken.jinja"\n')
    r = cli("build", str(recipe), "--base", str(BASE), "--out", str(tmp_path / "out"))
    assert r.code == 2 and f"Error: chat template {tmp_path / 'broken.jinja'}, line 2: " in r.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.build").exists()

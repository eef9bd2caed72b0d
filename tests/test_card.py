"""card: the seeds' sections, every figure taken from the checkpoint or a measurement file, none invented."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from mtpforge.testing.streamserver import Behaviour, canned_server

from .conftest import SHARED

TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


@pytest.mark.slow
def test_card_carries_the_measured_acceptance_and_throughput(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("verify", str(TINY), "--max-prompts", "2", "--new-tokens", "16", "--json")
    (tmp_path / "verify.json").write_text(r.out)
    with canned_server(Behaviour(tokens_per_event=2)) as (url, _):
        r = cli("bench", "--url", url, "--concurrency", "1,2", "--num-requests", "2", "--output-len", "8", "--json")
    (tmp_path / "bench.json").write_text(r.out)
    verify, bench = json.loads((tmp_path / "verify.json").read_text()), json.loads((tmp_path / "bench.json").read_text())

    r = cli("card", str(TINY), "--verify", str(tmp_path / "verify.json"), "--bench", str(tmp_path / "bench.json"),
            "--gpu", "24GiB", "--max-model-len", "4096", "--base-model", "Qwen/Qwen3.5-tiny",
            "--out", str(tmp_path / "README.md"))
    assert r.code == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and "base_model: Qwen/Qwen3.5-tiny" in text
    for heading in ("## Quantization", "## MTP speculative decoding", "## Memory (planned)", "## Usage",
                    "## Throughput (measured)", "## Files", "## Checks"):
        assert heading in text
    rates = verify["acceptance"]["acceptance_per_position"]
    assert [f"| {j + 1} | {100 * r:.1f} % |" for j, r in enumerate(rates)] == re.findall(r"\| \d \| [\d.]+ % \|", text)
    tok_s = [str(level["output_tokens_per_s"]) for level in bench["runs"][0]["levels"]]
    assert all(f"| {t} |" in text for t in tok_s)
    assert "`mtpforge verify`" in text and "`mtpforge bench`" in text and "mtpforge plan" in text
    assert "--speculative-config" in text and "model.safetensors" in text
    assert not list(tmp_path.glob(".*partial"))


def test_card_without_measurements_states_none(cli, make) -> None:  # type: ignore[no-untyped-def]
    r = cli("card", str(make("w4", quant="w4a16")))
    assert r.code == 0
    assert "Not measured yet" in r.out and "%" not in r.out and "## Throughput" not in r.out
    assert "compressed-tensors" in r.out and "`re:^mtp.*`" in r.out
    r = cli("card", str(make("headless", mtp=False)))
    assert "**no MTP head**" in r.out and "--speculative-config" not in r.out


def test_card_refuses_a_measurement_of_the_wrong_kind(cli, make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "x.json").write_text(json.dumps({"schema": "mtpforge.bench/1", "runs": []}))
    r = cli("card", str(make()), "--verify", str(tmp_path / "x.json"))
    assert r.code == 2 and "mtpforge.verify/1" in r.err
    assert (f"Error: {tmp_path / 'x.json'} is not a mtpforge.verify/1 document\n"
            "hint: it is written by `mtpforge verify --json`\n") in r.err


# Each seed card's launch line, as published (/work/shared/seeds/00N_*.txt: the cards of bannert/tmax-27b-AWQ-BF16-INT4,
# havenoammo/Qwen3.6-27B-INT8-MTP ("Minimum Setup"), sakamakismile/Qwen3.6-27B-Text-NVFP4-MTP ("Recommended production
# launch"), redashes/QwenPaw-Flash-9B-heretic-INT4-AWQ-MTP and LibertAIDAI/Qwen3.6-27B-W4A16-G128).
CARD_LINES = {
    "seed-000-w4a16-g32-asym-mtp-quantized": """vllm serve M --served-model-name tmax-27b --tensor-parallel-size 2
        --max-model-len 262144 --kv-cache-dtype fp8 --enable-auto-tool-choice --tool-call-parser qwen3_xml
        --reasoning-parser qwen3 --quantization compressed-tensors
        --speculative-config '{"method": "mtp", "num_speculative_tokens": 3}'""",
    "seed-001-w8a16-bf16-mtp": """vllm serve M --tensor-parallel-size 2 --gpu-memory-utilization 0.95
        --kv-cache-dtype fp8_e4m3 --max-model-len 262144 --language-model-only
        --speculative-config '{"method":"mtp","num_speculative_tokens":2}'
        --default-chat-template-kwargs '{"enable_thinking": true, "preserve_thinking": true}'
        --attention-backend FLASHINFER --reasoning-parser qwen3 --tool-call-parser qwen3_xml""",
    "seed-002-nvfp4-text-mtp": """vllm serve M --trust-remote-code --quantization modelopt --language-model-only
        --max-model-len 262144 --max-num-seqs 2 --kv-cache-dtype fp8 --gpu-memory-utilization 0.9 --reasoning-parser qwen3
        --speculative-config '{"method":"qwen3_5_mtp","num_speculative_tokens":3}'""",
    "seed-003-w4a16-mlp-skip-first": """sglang serve --trust-remote-code --model-path M --host 0.0.0.0 --port 8001
        --dtype auto --kv-cache-dtype fp8_e4m3 --mem-fraction-static 0.85""",
    "seed-004-w4a16-g128": """vllm serve M --tensor-parallel-size 1 --gpu-memory-utilization 0.95 --max-num-seqs 8
        --max-model-len 200000 --kv-cache-dtype fp8 --enable-prefix-caching
        --limit-mm-per-prompt '{"image":4,"video":0,"audio":0}' --enable-auto-tool-choice --tool-call-parser qwen3_coder
        --reasoning-parser qwen3 --speculative-config '{"method":"qwen3_next_mtp","num_speculative_tokens":2}'""",
}
# What mtpforge's line adds to or changes in each card's, and why (docs/seeds.md says the same).
ADDED = {
    "seed-000-w4a16-g32-asym-mtp-quantized": {"--host", "--port", "--language-model-only"},  # no vision weights: required
    "seed-001-w8a16-bf16-mtp": {"--host", "--port", "--quantization", "--enable-auto-tool-choice"},
    "seed-002-nvfp4-text-mtp": {"--host", "--port"},
    # SGLang drafts with the head only when told to (sgl-project/sglang, advanced_features/speculative_decoding.md,
    # "Multi Token Prediction"): without these the card's line serves the kept head unused.
    "seed-003-w4a16-mlp-skip-first": {"--speculative-algorithm", "--speculative-num-steps", "--speculative-eagle-topk",
                                      "--speculative-num-draft-tokens"},
    "seed-004-w4a16-g128": {"--host", "--port"},  # its GPTQ config: vLLM picks gptq_marlin itself, as on the card
}
CHANGED = {  # flag -> (card's value, ours): names of the same thing
    "seed-002-nvfp4-text-mtp": {"--quantization": ("modelopt", "modelopt_fp4"),
                                "--speculative-config": ("qwen3_5_mtp", "mtp")},
    "seed-004-w4a16-g128": {"--speculative-config": ("qwen3_next_mtp", "mtp")},
}
LEFT_OUT = {"seed-004-w4a16-g128": {"--tensor-parallel-size"}}  # the default
# Qwen3.6-27B's tokenizer has <think>, </think>, <tool_call>, </tool_call> as added tokens, and its chat_template.jinja
# writes a call as <tool_call>\n<function=NAME>\n<parameter=...> (the XML format).
QWEN_TOKENS = {"<think>": 248068, "</think>": 248069, "<tool_call>": 248058, "</tool_call>": 248059}
XML_TEMPLATE = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '</function>\\n</tool_call>' }}"


def entry_of(line: str) -> list[str]:
    """The words before the first flag, the model path left out: `vllm serve`, `sglang serve`."""
    words = shlex.split(line.replace("\\\n", " "))
    return [w for w in words[:next(i for i, w in enumerate(words) if w.startswith("--"))] if w != "M"]


def flags_of(line: str) -> dict[str, object]:
    """Flag -> value (True for a bare flag; a JSON value parsed; the speculative method alone) of a launch line."""
    words = shlex.split(line.replace("\\\n", " "))
    flags: dict[str, object] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
            if isinstance(value, str) and value.startswith("{"):
                value = json.loads(value)
                if "method" in value:
                    value = (value["method"], value["num_speculative_tokens"])
            flags[w] = value
    return flags


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtpforge.testing.replica import make_hollow_replica

    return make_hollow_replica(tmp_path_factory.mktemp("card") / "qwen3.6-27b")


@pytest.mark.parametrize("recipe", sorted(CARD_LINES))
def test_serve_on_a_build_prints_the_cards_launch_line(cli, replica: Path, tmp_path: Path, recipe: str) -> None:
    # The build's own files (hollow), with Qwen's tokenizer tokens and template, and the record build writes.
    from mtpforge.publish.recipe import load_recipe
    from tests.conftest import edit_json
    from tests.test_plan_serve import hollow_build

    out = hollow_build(replica, recipe, tmp_path / "out")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((replica / name).read_bytes())
    edit_json(out / "tokenizer.json", lambda d: d["added_tokens"].extend({"id": i, "content": t, "special": False}
                                                                           for t, i in QWEN_TOKENS.items()))
    (out / "chat_template.jinja").write_text(XML_TEMPLATE)
    (out / "preprocessor_config.json").write_text("{}")
    (out / "mtpforge-build.json").write_text(json.dumps({"recipe": load_recipe(recipe).doc}))
    r = cli("serve", str(out), "--json")
    assert r.code == 0, r.err
    command = json.loads(r.out)["command"].replace(str(out), "M")
    assert entry_of(command) == entry_of(CARD_LINES[recipe])  # the card's program: vllm serve, sglang serve
    ours, card = flags_of(command), flags_of(CARD_LINES[recipe])
    changed = CHANGED.get(recipe, {})
    for flag, value in card.items():
        if flag in LEFT_OUT.get(recipe, set()):
            continue
        if flag in changed:
            theirs, mine = changed[flag]
            assert (value[0] if isinstance(value, tuple) else value) == theirs
            got = ours[flag]
            assert (got[0] if isinstance(got, tuple) else got) == mine
            if isinstance(value, tuple):
                assert got[1] == value[1]  # the same number of draft tokens
            continue
        assert ours.get(flag) == value, (flag, ours.get(flag), value)
    assert set(ours) - set(card) == ADDED[recipe]
    assert set(card) - set(ours) == LEFT_OUT.get(recipe, set())
    from mtpforge.publish.card import card as make_card

    usage = make_card(out, name="M", serve=load_recipe(recipe).serve).split("## Usage")[1]
    assert usage.split("```bash\n")[1].split("\n```")[0] == command  # the card's Usage leads with the very same line


@pytest.mark.parametrize(("recipe", "util", "k"), [("seed-002-nvfp4-text-mtp", 0.9, 3), ("seed-004-w4a16-g128", 0.95, 2)])
def test_card_memory_rows_use_the_recipes_util_and_k(cli, replica: Path, tmp_path: Path, recipe: str, util: float,
                                                     k: int) -> None:
    from mtpforge.publish.card import card
    from mtpforge.publish.recipe import load_recipe
    from tests.test_plan_serve import hollow_build

    out = hollow_build(replica, recipe, tmp_path / "out")
    c = load_recipe(recipe).card
    assert (c["util"], c["k"]) == (util, k)
    text = card(out, gpus=tuple(c["gpus"]), max_model_len=c["max_model_len"], util=c["util"], spec_tokens=c["k"])
    assert f"--util {util} --kv-dtype fp8 --num-speculative-tokens {k}" in text
    r = cli("plan", str(out), "--gpu-memory", c["gpus"][-1], "--util", str(util), "--kv-dtype", "fp8", "--max-model-len",
            str(c["max_model_len"]), "--num-speculative-tokens", str(k), "--language-model-only", "--json")
    planned = json.loads(r.out)
    assert f"| {c['gpus'][-1]} | " in text and f"| {planned['kv_tokens']:,} | {planned['max_concurrency']:.2f} |" in text
    r = cli("card", str(out), "--gpu", c["gpus"][-1], "--util", str(util), "--k", str(k), "--max-model-len",
            str(c["max_model_len"]))
    assert r.code == 0 and f"| {planned['kv_tokens']:,} | {planned['max_concurrency']:.2f} |" in r.out


def test_a_card_for_an_attention_only_family_names_it_without_a_hybrid_split(tmp_path: Path) -> None:
    """DeepSeek-V3's published config (shared/reference/public-configs/deepseek-ai--DeepSeek-V3, 4 layers kept):
    the hub tag is its model_type, not "qwen3", and the summary claims no Gated DeltaNet layers."""
    from mtpforge.publish.card import card
    from mtpforge.testing.replica import make_family_replica

    public = SHARED / "reference" / "public-configs" / "deepseek-ai--DeepSeek-V3"
    text = card(make_family_replica(tmp_path / "v3", json.loads((public / "config.json").read_text())))
    front = text.split("---")[1]
    assert "- deepseek_v3" in front and "- qwen3" not in front
    summary = next(line for line in text.splitlines() if line.startswith("Unquantized build"))
    assert "DeepseekV3ForCausalLM, 4 layers)" in summary and "Gated DeltaNet" not in summary

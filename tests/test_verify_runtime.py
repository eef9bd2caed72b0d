"""verify's sources of text (--sequences, --save-sequences), its runtimes (in memory, streamed), KLD with either,
and bounded memory at the real Qwen3.6-27B widths (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mtpforge.checkpoint.writer import TensorData  # noqa: E402
from mtpforge.reference.model import ReferenceModel, load_reference  # noqa: E402
from mtpforge.reference.runtime import open_runtime  # noqa: E402
from mtpforge.reference.streamed import StreamedModel, open_streamed  # noqa: E402
from mtpforge.testing.factory import write_shards, write_tokenizer_files  # noqa: E402
from mtpforge.testing.replica import reference_inventory  # noqa: E402
from mtpforge.verify.divergence import measure_divergence  # noqa: E402

warnings.filterwarnings("ignore")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
Make = Callable[..., Path]


def test_saved_sequences_score_the_same_in_a_later_streamed_run(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seqs = tmp_path / "seqs.json"
    first = cli("verify", str(TINY), "--max-prompts", "2", "--new-tokens", "20", "--save-sequences", str(seqs), "--json")
    assert first.code == 0, first.err
    doc = json.loads(seqs.read_text())
    assert doc["schema"] == "mtpforge.sequences/1" and len(doc["sequences"]) == 2
    assert all(len(s["ids"]) == s["prompt_tokens"] + 20 for s in doc["sequences"])
    again = cli("verify", str(TINY), "--runtime", "streamed", "--sequences", str(seqs), "--json")
    assert again.code == 0, again.err
    a, b = json.loads(first.out), json.loads(again.out)
    assert a["acceptance"] == b["acceptance"] and b["new_tokens"] == 20
    assert "streamed" in b["acceptance_source"] and "in memory" in a["acceptance_source"]
    assert b["acceptance"]["interval95_per_position"][0][0] < b["acceptance"]["acceptance_per_position"][0]


def test_a_bad_sequences_file_is_a_usage_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "mtpforge.sequences/1", "sequences": [{"prompt_tokens": 5, "ids": [1, 2]}]}))
    r = cli("verify", str(TINY), "--sequences", str(bad))
    assert r.code == 2 and f"--sequences {bad}: sequence 0 needs prompt_tokens >= 1" in r.err
    assert "hint: it is written by `mtpforge verify --save-sequences FILE`" in r.err


def test_engine_only_needs_an_engine_and_no_reference(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("verify", str(TINY), "--engine-only")
    assert r.code == 2 and "--engine-only measures through a running engine alone" in r.err
    r = cli("verify", str(TINY), "--engine-only", "--engine-url", "http://127.0.0.1:9", "--reference", str(TINY))
    assert r.code == 2 and "takes no --reference" in r.err


def test_the_runtime_is_chosen_by_what_fits() -> None:
    assert isinstance(open_runtime(TINY), ReferenceModel)
    assert isinstance(open_runtime(TINY, runtime="streamed"), StreamedModel)


def test_kld_with_both_models_streamed_equals_the_in_memory_one(make: Make) -> None:
    base = make("base", vision=False)
    quantized = make("q", vision=False, quant="w4a16")
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13]]
    streamed = measure_divergence(open_streamed(quantized), open_streamed(base), seqs)
    memory = measure_divergence(load_reference(quantized), load_reference(base), seqs)
    assert streamed.kl_mean_nats > 0 and streamed.positions == 13
    for field, value in memory.to_dict().items():
        assert streamed.to_dict()[field] == pytest.approx(value, rel=1e-5, abs=1e-7), field


def real_width_slice(out: Path, layers: int) -> Path:
    """The real Qwen3.6-27B inventory (shipped with mtpforge.testing, from the published checkpoint's index and
    headers; config in /work/shared/reference/qwen3.6-27b) cut to `layers` decoder layers, no vision tower;
    tensor data is sparse zeros."""
    config, inventory = reference_inventory()
    config["text_config"]["num_hidden_layers"] = layers
    config["text_config"]["layer_types"] = config["text_config"]["layer_types"][:layers]
    tensors = []
    for t in inventory:
        parts = t["name"].split(".")
        if "visual" in parts or ("layers" in parts and parts[0] != "mtp" and int(parts[parts.index("layers") + 1]) >= layers):
            continue
        tensors.append(TensorData(t["name"], t["dtype"], tuple(t["shape"])))
    out.mkdir()
    write_shards(out, tensors, shards=2, index=True)
    (out / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(out, vocab_size=16)
    return out


@pytest.mark.slow
def test_verify_streams_real_27b_widths_in_bounded_memory(tmp_path: Path) -> None:
    ckpt = real_width_slice(tmp_path / "slice", layers=4)  # 3 Gated DeltaNet layers and 1 attention layer, as published
    seqs = tmp_path / "seqs.json"
    seqs.write_text(json.dumps({"schema": "mtpforge.sequences/1", "source": "test",
                                "sequences": [{"prompt_tokens": 4, "ids": [3, 200000, 7, 1, 5, 9, 248319, 2, 4, 6, 8, 10]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "mtpforge", "verify", str(ckpt), "--runtime", "streamed", "--sequences",
                             str(seqs), "--k", "2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report = json.loads(out)
    # zero weights: every logit is 0, trunk and head both choose token 0, every draft is accepted
    assert report["acceptance"]["drafts"] > 0 and report["acceptance"]["acceptance_per_position"] == [1.0, 1.0]
    # resident: lm_head in BF16 (2.54 GB), the head in fp32 (1.7 GB), one fp32 layer (1.5 GB); never the 4-layer fp32 model
    # plus embeddings (13.6 GB) that the in-memory runtime would build
    assert usage.ru_maxrss * 1024 < 7.0 * 2**30


def test_the_streamed_runtime_continues_greedily_like_transformers_generate() -> None:
    prompt = [72, 101, 108, 108, 111, 32, 119]
    streamed = open_streamed(TINY).greedy([prompt], 6)
    from mtpforge.verify.acceptance import greedy_continuation

    assert streamed == [greedy_continuation(load_reference(TINY), prompt, 6)]

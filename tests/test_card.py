"""card: the seeds' sections, every figure taken from the checkpoint or a measurement file, none invented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mtpforge.testing.streamserver import Behaviour, canned_server

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

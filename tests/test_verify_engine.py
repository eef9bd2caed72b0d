"""verify through the real vLLM engine (CPU build) on the bundled tiny model: engine-only mode, and the reference
runtime scoring the very text vLLM generated, the two counts agreeing within their 95 % intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .engine import engine_available, vllm_server

pytestmark = [pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not engine_available(), reason="no vLLM engine venv (make engine-env)")]
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


def test_engine_only_and_teacher_forced_on_the_engines_text_agree(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with vllm_server(TINY, tmp_path / "vllm.log", spec_tokens=3) as url:
        only = cli("verify", str(TINY), "--engine-url", url, "--engine-only", "--k", "3", "--max-prompts", "8",
                   "--new-tokens", "64", "--save-sequences", str(tmp_path / "engine.json"), "--json")
        assert only.code == 0, only.err
        both = cli("verify", str(TINY), "--engine-url", url, "--k", "3", "--max-prompts", "8", "--new-tokens", "64", "--json")
        assert both.code == 0, both.err
    engine_only = json.loads(only.out)
    assert engine_only["acceptance_source"] == "the engine's /metrics counters" and engine_only["engine_acceptance"] is None
    assert engine_only["acceptance"]["drafts"] > 100 and engine_only["acceptance"]["acceptance_per_position"][0] > 0.3
    saved = json.loads((tmp_path / "engine.json").read_text())
    assert saved["source"].startswith("vLLM") and all(len(s["ids"]) == s["prompt_tokens"] + 64 for s in saved["sequences"])

    report = json.loads(both.out)
    assert report["sequences_source"].startswith("vLLM") and "teacher-forced" in report["acceptance_source"]
    [comparison] = report["comparisons"]
    assert comparison["b"] == "candidate in vLLM"
    assert comparison["agree"], comparison  # the runtime counts the engine's own text: no gap beyond the intervals

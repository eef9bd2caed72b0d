"""serve --run starts the real vLLM (CPU build) on the bundled model; bench and verify measure it through HTTP."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mtpforge.engine.process import free_port

from .engine import ENGINE_PYTHON, engine_available

pytestmark = [pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not engine_available(), reason="no vLLM engine venv (make engine-env)")]
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"


def wait_for_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    """The URL `serve --run` prints once the engine is healthy."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        if sel.select(timeout=1):
            line = proc.stderr.readline()  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith("ready: "):
                return line.split()[1]
            if not line and proc.poll() is not None:
                break
    raise AssertionError("serve --run did not report ready:\n" + "".join(seen[-20:]))


def test_serve_run_then_bench_and_verify_through_the_engine(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "mtpforge", "serve", str(TINY), "--device", "cpu", "--run", "--engine-python", str(ENGINE_PYTHON),
         "--port", str(port), "--max-model-len", "1024", "--max-num-seqs", "4", "--num-speculative-tokens", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        url = wait_for_ready(serve, timeout=400)
        assert url == f"http://127.0.0.1:{port}"

        r = cli("bench", "--url", url, "--concurrency", "1,4", "--num-requests", "8", "--input-len", "32", "--output-len", "32",
                "--json", "--out", str(tmp_path / "bench"))
        assert r.code == 0, r.err
        levels = json.loads(r.out)["runs"][0]["levels"]
        for level in levels:
            assert level["completed"] == 8 and level["output_tokens"] == 8 * 32
            spec = level["spec_decode"]
            # The tiny model's head drafts well at position 1 (~69 % in verify); three positions, decaying.
            assert len(spec["per_position"]) == 3 and spec["per_position"][0] > 0.3
            assert spec["per_position"][0] >= spec["per_position"][2]
            assert 1.5 < spec["mean_acceptance_length"] <= 4
        assert (tmp_path / "bench" / "bench.png").stat().st_size > 0

        r = cli("verify", str(TINY), "--engine-url", url, "--k", "3", "--max-prompts", "4", "--new-tokens", "32", "--json")
        assert r.code == 0, r.err
        report = json.loads(r.out)
        ours, engine = report["acceptance"]["acceptance_per_position"], report["engine_acceptance"]["acceptance_per_position"]
        assert abs(ours[0] - engine[0]) <= 0.05
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
    assert code == 0
    with pytest.raises(OSError):  # the engine went down with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)

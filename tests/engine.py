"""Start the real vLLM engine (CPU build, in its own virtual environment) on a
checkpoint, and read its speculative-decoding counters.

The launch line is the one DESIGN.md records as working on this machine:
bfloat16, eager mode, no prefix caching, MTP with `method: mtp`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtpforge.verify.engine import complete, spec_counters

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PYTHON = Path(os.environ.get("MTPFORGE_ENGINE_PYTHON", ROOT / ".venv-engine" / "bin" / "python"))
START_TIMEOUT_SEC = 300


def engine_available() -> bool:
    return ENGINE_PYTHON.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(model: Path, log: Path, *, spec_tokens: int = 2, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Serve `model` with MTP drafting; yield the base URL; stop the server on exit."""
    port = _free_port()
    cmd = [str(ENGINE_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", "m",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "512", "--enforce-eager",
           "--no-enable-prefix-caching", "--max-num-seqs", "4",
           "--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": spec_tokens}), *extra]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}:\n" + log.read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("vLLM did not become healthy:\n" + log.read_text()[-4000:])
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


__all__ = ["complete", "engine_available", "spec_counters", "vllm_server"]

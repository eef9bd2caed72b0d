"""Tests start the real vLLM engine through mtpforge's own launcher, in the engine venv."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtpforge.engine.metrics import spec_counters
from mtpforge.engine.process import launched_vllm
from mtpforge.verify.served import complete

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PYTHON = Path(os.environ.get("MTPFORGE_ENGINE_PYTHON", ROOT / ".venv-engine" / "bin" / "python"))


def engine_available() -> bool:
    return ENGINE_PYTHON.exists()


@contextmanager
def vllm_server(model: Path, log: Path, *, spec_tokens: int = 2, extra: tuple[str, ...] = ()) -> Iterator[str]:
    with launched_vllm(Path(model), python=str(ENGINE_PYTHON), spec_tokens=spec_tokens, log=log, extra=extra) as url:
        yield url


__all__ = ["ENGINE_PYTHON", "complete", "engine_available", "spec_counters", "vllm_server"]

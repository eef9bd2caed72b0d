"""Config-value fuzz (issue 12): 1,000 mutations of real configs through inspect, doctor, plan, serve and
card via the real CLI entry point; every exit is 0-3, never a traceback (70), never a hang.

The mutations and the runner are bench/fuzz_config.py's (`make fuzz` runs a longer campaign); the seed is
fixed, so a failure reproduces, and the assertion message lists each failing mutation.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_config.py"


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_config", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_config"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz_config = _fuzz_module()


def _check(result: object, mutations: int) -> None:
    r = result
    assert r.mutations == mutations and r.runs == mutations * len(fuzz_config.VERBS)  # type: ignore[attr-defined]
    failures = r.tracebacks + [f"hang: {h}" for h in r.hangs]  # type: ignore[attr-defined]
    assert failures == [], "\n\n".join(failures[:10])
    assert set(r.exits) <= fuzz_config.OK_CODES  # type: ignore[attr-defined]


def test_a_few_mutations_of_every_seed(tmp_path: Path) -> None:
    _check(fuzz_config.fuzz(tmp_path, 24, seed=1, budget_s=10.0), 24)


@pytest.mark.slow
def test_a_thousand_config_mutations_exit_cleanly_and_never_hang(tmp_path: Path) -> None:
    result = fuzz_config.fuzz(tmp_path, 1000, seed=12, budget_s=10.0)
    _check(result, 1000)
    assert result.exits.get(3, 0) > 0 and result.exits.get(0, 0) > 0  # both refused and accepted configs were run
    assert result.wall_s < 240, f"the fuzz took {result.wall_s:.0f} s; keep it within minutes"


def test_mutations_are_reproducible_and_cover_the_promised_kinds() -> None:
    config = json.loads((Path(fuzz_config.__file__).parents[1] / "src/mtpforge/models/tiny-qwen3.5/config.json").read_text())
    first = [fuzz_config.mutate(config, random.Random(12))[0] for _ in range(1)]
    again = [fuzz_config.mutate(config, random.Random(12))[0] for _ in range(1)]
    assert first == again
    rng = random.Random(3)
    described = " ".join(fuzz_config.mutate(config, rng)[0] for _ in range(400))
    for kind in ("del ", "NaN", "Infinity", "1000000000.0", "\\u0000", "\\ud83d", '"4"', "[[[]]]", '{"k": '):
        assert kind in described, kind

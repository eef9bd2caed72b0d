"""Outputs of graft and strip load in transformers, as the real reader of HF
checkpoints: nothing unexpected, nothing missing but the stripped vision
tower, and the trunk computes exactly what the input's trunk computes."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

Make = Callable[..., Path]


def load(path: Path):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        model, info = transformers.AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True,
                                                                               dtype=torch.bfloat16)
    return model.eval(), info


def logits(model, ids: list[int]):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.mark.slow
@pytest.mark.parametrize("quant", [None, "w4a16", "w4a16-asym", "w8a16", "nvfp4"])
def test_grafted_and_stripped_outputs_load_in_transformers(tmp_path: Path, make: Make, quant: str | None) -> None:
    from mtpforge.surgery.graft import graft
    from mtpforge.surgery.strip import strip

    base = make("base")
    target = make("target", mtp=False, quant=quant, seed=4)
    graft(str(target), str(base), str(tmp_path / "grafted"))
    strip(str(tmp_path / "grafted"), str(tmp_path / "text"))
    ids = [5, 17, 42, 9, 200]

    before, info = load(target)
    assert not any(info.values())
    grafted, info = load(tmp_path / "grafted")
    assert not any(info.values())  # transformers drops mtp.* silently (not even "unexpected")
    assert torch.equal(logits(grafted, ids), logits(before, ids))  # the trunk is untouched

    text, info = load(tmp_path / "text")
    assert info["unexpected_keys"] == set() or not info["unexpected_keys"]
    # transformers builds the vision tower regardless of language_model_only: only it may be missing
    assert info["missing_keys"] and all(k.startswith("model.visual.") for k in info["missing_keys"])
    assert torch.equal(logits(text, ids), logits(before, ids))

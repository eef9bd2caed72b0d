"""The head's calibration capture: the same Hessians in memory and streamed, in one batch or many, and in the
streamed runtime never the head and a decoder layer resident together (the 27B memory bound of issue 15).

Fixture: the bundled tiny Qwen3.5 (trained head; the real Qwen3.6-27B's layout, src/mtpforge/models/tiny-qwen3.5/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
MODULES = ["mtp.layers.0.self_attn.q_proj", "mtp.layers.0.mlp.down_proj"]


def texts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (40, 24, 33)]


def test_streamed_and_batched_capture_equal_the_in_memory_one_without_the_head_beside_a_layer(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mtpforge.quant import head_capture
    from mtpforge.reference.streamed import StreamedModel

    whole = head_capture.head_hessians(TINY, MODULES, texts(), runtime="memory", steps=2)

    loads: list[bool] = []
    layer = StreamedModel.layer

    def watched_layer(self, i):  # type: ignore[no-untyped-def]
        loads.append(self._head is not None)
        return layer(self, i)

    monkeypatch.setattr(StreamedModel, "layer", watched_layer)
    monkeypatch.setattr(head_capture, "BATCH_BYTES", 1)  # one text per batch: the trunk read three times
    lines: list[str] = []
    streamed = head_capture.head_hessians(TINY, MODULES, texts(), runtime="streamed", steps=2, progress=lines.append)

    assert lines == ["head capture: text 1/3", "head capture: text 2/3", "head capture: text 3/3"]
    assert len(loads) == 3 * 4 and not any(loads), loads  # 4 decoder layers per batch, none with the head resident
    for name in MODULES:
        assert streamed[name].shape == whole[name].shape
        torch.testing.assert_close(streamed[name], whole[name], rtol=1e-4, atol=1e-6)
        assert float(torch.diagonal(whole[name]).min()) > 0  # every input channel seen


def test_the_hessian_accumulated_in_place_is_llm_compressors_statistic() -> None:
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian

    from mtpforge.quant.head_capture import _record

    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(48, 16, bias=False)
    inputs = [torch.randn(1, 37, 48, generator=g).to(torch.bfloat16), torch.randn(2, 5, 48, generator=g),
              torch.randn(9, 48, generator=g)]
    theirs, count = make_empty_hessian(linear), torch.zeros(())
    ours: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for x in inputs:
        theirs, count = accumulate_hessian(x, linear, theirs, count)
        _record(linear, (x,), name="w", hessians=ours, counts=counts)
    assert counts["w"] == int(count) == 4  # counted per sequence, as llm-compressor counts (a 2-D input is one)
    torch.testing.assert_close(ours["w"], theirs, rtol=1e-5, atol=1e-5)

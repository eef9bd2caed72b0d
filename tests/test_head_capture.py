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

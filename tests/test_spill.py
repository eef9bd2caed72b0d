"""llm-compressor's activation cache between layers kept on disk (`quant.spill`), used by `quantize --runtime streamed`.

What a user relies on: the values come back byte for byte (calibration is unchanged), host memory does not hold
them, and no file is left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")


def test_cached_activations_round_trip_through_files_that_go_when_the_pipeline_drops_them(tmp_path: Path) -> None:
    from llmcompressor.pipelines.cache import IntermediatesCache

    from mtpforge.quant.spill import MIN_BYTES, activations_on_disk

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 256, 2048, generator=g).to(torch.bfloat16)  # 1 MiB: spilled
    rotary = (torch.randn(1, 256, 1024, generator=g), torch.randn(1, 256, 1024, generator=g))  # 1 MiB each, in a tuple
    ids = torch.arange(256)[None]  # 2 KiB: stays in memory
    assert hidden.nbytes >= MIN_BYTES > ids.nbytes
    folder = tmp_path / "activations"
    with activations_on_disk(folder):
        cache = IntermediatesCache.empty(2, torch.device("cpu"))
        cache.update(0, {"hidden_states": hidden, "position_embeddings": rotary, "input_ids": ids})
        cache.update(1, {"hidden_states": hidden * 2})
        assert len(list(folder.glob("*.bin"))) == 4
        back = cache.fetch(0)
        assert back["hidden_states"].dtype == torch.bfloat16 and torch.equal(back["hidden_states"], hidden)
        assert isinstance(back["position_embeddings"], tuple)
        assert all(torch.equal(a, b) for a, b in zip(back["position_embeddings"], rotary, strict=True))
        assert torch.equal(back["input_ids"], ids)
        back["hidden_states"][0, 0, 0] = 7.0  # what the pipeline gets is its own copy: the stored value stays
        assert torch.equal(cache.fetch(0)["hidden_states"], hidden)
        del back
        cache.delete(0)  # the pipeline drops batch 0's inputs once the layer has run: their files go
        assert len(list(folder.glob("*.bin"))) == 1
        assert torch.equal(cache.fetch(1)["hidden_states"], hidden * 2)
    assert not folder.exists()  # what the pipeline still held is removed on leaving
    plain = IntermediatesCache.empty(1, torch.device("cpu"))  # llm-compressor's own behaviour is back
    plain.update(0, {"hidden_states": hidden})
    assert plain.fetch(0)["hidden_states"] is hidden


@pytest.mark.slow
def test_streamed_calibration_keeps_its_activations_on_disk_and_leaves_none(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mtpforge.formats.schemes import SCHEMES
    from mtpforge.quant import spill
    from mtpforge.quant.calibrated import quantize_calibrated

    spilled: list[int] = []
    init = spill.SpilledTensor.__init__

    def counted(self, tensor, path):  # type: ignore[no-untyped-def]
        spilled.append(tensor.nbytes)
        init(self, tensor, path)

    monkeypatch.setattr(spill.SpilledTensor, "__init__", counted)
    monkeypatch.setattr(spill, "MIN_BYTES", 1)  # the tiny model's activations are KiBs; the real ones MBs
    tiny = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
    token_ids = [list(range(10, 10 + 128)), list(range(300, 300 + 128))]
    lines: list[str] = []
    quantize_calibrated(tiny, tmp_path / "work" / "staging", method="gptq", weights=SCHEMES["w4a16"].weights_config(32),
                        ignore=["lm_head", "re:.*visual.*", "re:.*linear_attn.*", "re:^mtp.*"], token_ids=token_ids,
                        runtime="streamed", progress=lines.append)
    hidden = 128 * 128 * 2  # one text's hidden states between two layers, BF16 (tiny model: hidden 128)
    assert spilled.count(hidden) >= 2 * 4, spilled  # both texts, at every decoder layer boundary
    assert (tmp_path / "work" / "staging" / "config.json").is_file()
    assert not (tmp_path / "work" / "activations").exists()  # (the weights' offload folder is the caller's scratch)


@pytest.mark.slow
def test_a_disk_that_fills_while_calibrating_is_an_input_error_that_writes_nothing(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    from mtpforge.quant import spill

    def full(self, tensor, path):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(spill.SpilledTensor, "__init__", full)  # the first activation written to the scratch
    monkeypatch.setattr(spill, "MIN_BYTES", 1)
    tiny = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tiny.iterdir())
    out = tmp_path / "out"
    result = cli("quantize", str(tiny), "--out", str(out), "--method", "gptq", "--scheme", "w4a16", "--runtime", "streamed",
                 "--samples", "2", "--seq-len", "32")
    assert result.code == 3, result.err[-2000:]
    assert f"no space left on the device of {tmp_path}" in result.err and "free space or choose another --out" in result.err
    assert not out.exists() and not any(p.name.endswith(".calibrating") for p in tmp_path.iterdir())  # no scratch left
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tiny.iterdir()) == before  # input untouched

"""llm-compressor's GPTQ without its Hessian copies (`quant.lean_gptq`), used by `quantize --runtime streamed`.

What a user relies on: the same statistic reaches the same solver (so the same checkpoint, within float32 rounding),
with no second Hessian-sized tensor on the way, and llm-compressor left as it was afterwards.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor")


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 33, 64, generator=g).to(torch.bfloat16), torch.randn(1, 17, 64, generator=g)]


@torch.no_grad()
def test_the_lean_pieces_give_llm_compressors_inputs_to_the_solver_without_copying_the_hessian() -> None:
    from llmcompressor.modifiers.gptq import base

    from mtpforge.quant.lean_gptq import lean_gptq

    linear = torch.nn.Linear(64, 24, bias=False).to(torch.bfloat16)
    qparams = {"scale": torch.rand(24, 2) + 0.1, "zero_point": torch.zeros(24, 2, dtype=torch.int8), "global_scale": None}

    def run() -> tuple[tuple[torch.Tensor, ...], int]:
        hessian, count = base.make_empty_hessian(linear), torch.zeros(())
        for x in _inputs():
            hessian, count = base.accumulate_hessian(x, linear, hessian, count)
        accumulated = hessian.data_ptr()
        prepared = base.prepare_batch([linear], [qparams], {linear: hessian}, {linear: count})
        return prepared, accumulated

    original = base.accumulate_hessian, base.prepare_batch
    theirs, _ = run()
    with lean_gptq():
        ours, accumulated = run()
    assert (base.accumulate_hessian, base.prepare_batch) == original  # restored on leaving
    weights, hessians, scales, zero_points, global_scales = ours
    assert hessians.data_ptr() == accumulated  # the accumulated Hessian itself, normalized in place: no copy
    assert weights.data_ptr() != linear.weight.data_ptr() and weights.dtype == torch.float32  # the solver may overwrite it
    for a, b in zip(ours[:4], theirs[:4], strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert global_scales is None and theirs[4] is None
    assert scales.data_ptr() != qparams["scale"].data_ptr()  # the observer's own tensors stay untouched by the solver
    assert zero_points.data_ptr() != qparams["zero_point"].data_ptr()


@torch.no_grad()
def test_a_batch_of_several_modules_still_goes_through_llm_compressor() -> None:
    from llmcompressor.modifiers.gptq import base

    from mtpforge.quant.lean_gptq import lean_gptq

    pair = [torch.nn.Linear(64, 24, bias=False) for _ in range(2)]
    qparams = [{"scale": torch.rand(24, 2), "zero_point": torch.zeros(24, 2), "global_scale": None} for _ in pair]
    with lean_gptq():
        weights, hessians, *_ = base.prepare_batch(pair, qparams, {m: torch.eye(64) * 2 for m in pair},
                                                   {m: torch.tensor(2.0) for m in pair})
    assert weights.shape == (2, 24, 64) and torch.equal(hessians, torch.eye(64).expand(2, 64, 64))

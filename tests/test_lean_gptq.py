"""llm-compressor's GPTQ without its Hessian copies (`quant.lean_gptq`), used by `quantize --runtime streamed`.

What a user relies on: the same statistic reaches the same solver (so the same checkpoint, within float32 rounding),
with no second Hessian-sized tensor on the way, and llm-compressor left as it was afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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



SOLVE = """
import sys, torch
from llmcompressor.modifiers.gptq import gptq_quantize
from mtpforge.formats.schemes import SCHEMES
from mtpforge.quant.lean_gptq import lean_gptq
from mtpforge.quant.observers import observed_qparams, quant_args
lean, actorder, n = sys.argv[1] == "lean", sys.argv[2] if sys.argv[2] != "none" else None, int(sys.argv[3])
g = torch.Generator().manual_seed(0)
basis = torch.randn(n, 64, generator=g)
hessian = basis @ basis.T                   # correlated inputs, as hidden states are
hessian.diagonal().add_(0.1 * n)
if sys.argv[4] == "dead":
    hessian[5].zero_(); hessian[:, 5].zero_()  # an input channel never seen
w = torch.randn(1, 48, n, generator=g) * 0.02
weights = {**SCHEMES["w4a16-asym"].weights_config(32), "observer": "minmax", "actorder": actorder}  # seed 000's grid
scale, zero = observed_qparams(w[0], weights)
args = quant_args(weights)
def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here: what came before (imports, set-up) cannot mask the solve's
before = status("VmRSS")
with lean_gptq() if lean else torch.no_grad():
    q, loss, _ = gptq_quantize.quantize_weight(w, hessian[None], scale[None], zero[None], None, args)
torch.save({"q": q[0], "loss": loss, "grown": status("VmHWM") - before, "before": before}, sys.argv[5])
"""


def _solve(tmp_path: Path, how: str, actorder: str | None, dead: bool) -> dict[str, Any]:
    """llm-compressor's `quantize_weight` on one INT4 g32 weight whose Hessian is 4096 x 4096 (64 MiB), in a process of
    its own: the quantized weight, the loss, and how far the process's resident memory rose above its level at the start
    of the solve (Linux's VmHWM, reset just before)."""
    out = tmp_path / f"{how}.pt"
    subprocess.run([sys.executable, "-c", SOLVE, how, actorder or "none", "4096", "dead" if dead else "seen", str(out)],
                   check=True, timeout=600)
    return dict(torch.load(out))


@pytest.mark.slow
@pytest.mark.parametrize(("actorder", "dead"), [(None, False), ("static", False), (None, True)])
def test_the_lean_solve_equals_llm_compressors_without_a_hessian_sized_copy(tmp_path: Path, actorder: str | None,
                                                                            dead: bool) -> None:
    theirs, ours = _solve(tmp_path, "llm-compressor", actorder, dead), _solve(tmp_path, "lean", actorder, dead)
    hessian = 4096 * 4096 * 4
    copies = 2 if actorder else 1  # llm-compressor's: one to factor, two to permute
    assert theirs["grown"] >= 0.9 * hessian * copies, (theirs["grown"], theirs["before"])
    assert ours["grown"] <= 0.5 * hessian, (ours["grown"], ours["before"])  # in place: the weight-sized buffers only
    differing = (ours["q"] != theirs["q"]).float().mean().item()  # float32 rounding may move a grid point, rarely
    assert differing <= 0.01, differing
    torch.testing.assert_close(ours["loss"], theirs["loss"], rtol=1e-3, atol=1e-6)
    if dead:  # a channel never seen: its weights are zeroed before solving, as llm-compressor does
        assert torch.equal(ours["q"][:, 5], theirs["q"][:, 5])

"""llm-compressor's GPTQ without its copies of the Hessian, for calibration in bounded memory.

At 27B widths down_proj's Hessian is [17408, 17408] float32, 1.1 GiB, and
llm-compressor 0.14 makes copies of it that a bounded run cannot afford:
accumulating (`hessian += inp @ inp.T` builds the product as a temporary of the
same size) and again before solving (`prepare_batch` divides into a new tensor,
then stacks it into another, while the original is still referenced), and
while solving (its Cholesky steps write into the row-major Hessian through a
column-major copy, and activation ordering permutes it through two copies).
Measured on a real-width slice (bench/calibrate_slice.py), a decoder layer's
calibration peaked at 5.3 GiB with them and 3.8 GiB without. Inside `lean_gptq()` the
same statistic is accumulated in place (`addmm_`), a batch of one module is
handed to the solver as views of its own tensors, normalized in place, the
factorization runs on the Hessian's transposed view (the same symmetric
matrix, already laid out as LAPACK wants it) and the permutation is done in
place. The solver (`quantize_weight`) is llm-compressor's, unchanged; the
results equal its own to float32 rounding (tests/test_lean_gptq.py). Batches of
several modules (`batched_quantization`) still go through llm-compressor's own
pieces: the caller turns batching off for bounded runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

PERMUTE_ROWS = 256  # rows whose columns are permuted at once: a [256, 17408] float32 scratch (17 MB) at 27B widths


def add_to_hessian(hessian: torch.Tensor, x: torch.Tensor) -> int:
    """Add 2 X^T X of the input `x` [..., in] to `hessian` [in, in] in place; return the sequences it counts as.

    llm-compressor's statistic (`gptq.helpers.accumulate_hessian`): float32, a 3-D input counts its batch size, a 2-D one
    counts one.
    """
    rows = x.reshape(-1, x.shape[-1]).to(device=hessian.device, dtype=hessian.dtype)
    hessian.addmm_(rows.T, rows, alpha=2.0)
    return x.shape[0] if x.dim() > 2 else 1


@contextmanager
def lean_gptq() -> Iterator[None]:
    """llm-compressor's GPTQModifier accumulating and preparing Hessians in place while the block runs."""
    from llmcompressor.modifiers.gptq import base
    from llmcompressor.modifiers.gptq import gptq_quantize as solver

    accumulate, prepare = base.accumulate_hessian, base.prepare_batch

    def accumulate_in_place(inp: torch.Tensor, module: torch.nn.Module, hessian: torch.Tensor,
                            num_samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if type(module) is not torch.nn.Linear:  # Conv1D / Conv2d unfold their input first: llm-compressor's own way
            return accumulate(inp, module, hessian, num_samples)
        num_samples += add_to_hessian(hessian, inp)
        return hessian, num_samples

    def prepare_in_place(batch: list[torch.nn.Module], batch_qparams: list[dict[str, Any]],
                         hessians_by_module: dict[torch.nn.Module, torch.Tensor],
                         num_samples_by_module: dict[torch.nn.Module, torch.Tensor]) -> tuple[Any, ...]:
        if len(batch) != 1:
            return prepare(batch, batch_qparams, hessians_by_module, num_samples_by_module)
        module, qparams = batch[0], batch_qparams[0]
        hessian = hessians_by_module.pop(module)
        hessian.div_(num_samples_by_module.pop(module).to(hessian.device))
        # the solver works in its inputs (they are its "disposable" buffers): the weight is copied, the Hessian is ours
        weight = torch.as_tensor(module.weight).detach().to(dtype=torch.float32, copy=True)
        global_scale = qparams["global_scale"]
        return (weight[None], hessian[None], qparams["scale"].clone()[None], qparams["zero_point"].clone()[None],
                None if global_scale is None else global_scale.reshape(-1)[:1].clone())

    base.accumulate_hessian, base.prepare_batch = accumulate_in_place, prepare_in_place
    factorize, order = solver.factorize_hessian, solver.apply_activation_ordering
    solver.factorize_hessian = partial(_factorize_in_place, factorize)
    solver.apply_activation_ordering = partial(_order_in_place, order)
    try:
        yield
    finally:
        base.accumulate_hessian, base.prepare_batch = accumulate, prepare
        solver.factorize_hessian, solver.apply_activation_ordering = factorize, order


def _factorize_in_place(factorize: Any, weights: torch.Tensor, hessians: torch.Tensor, percdamp: float,
                        used_rtn_fallback: torch.Tensor) -> torch.Tensor:
    """llm-compressor's `factorize_hessian` for one Hessian: dampened, then the upper Cholesky factor of its inverse,
    written over it with no copy (a singular Hessian falls back to the identity: RTN, as llm-compressor does)."""
    if hessians.shape[0] != 1:
        return factorize(weights, hessians, percdamp, used_rtn_fallback)
    hessian = hessians[0]
    diag = torch.diagonal(hessian)
    dead = diag == 0
    if dead.any():  # an input channel never seen: its weights are zeroed, as llm-compressor does
        diag.masked_fill_(dead, 1.0)
        weights.masked_fill_(dead[None, None], 0)
    diag.add_(percdamp * torch.mean(diag))
    info = torch.empty((), dtype=torch.int32, device=hessian.device)
    lapack = hessian.mT  # symmetric: the same matrix, column-major, so LAPACK works in it without a copy
    torch.linalg.cholesky_ex(lapack, check_errors=False, out=(lapack, info))
    if info.item() == 0:
        torch.cholesky_inverse(lapack, out=lapack)
        torch.linalg.cholesky(lapack, out=lapack)  # lower in the column-major view: upper in the row-major Hessian
    else:
        hessian.copy_(torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device))
        used_rtn_fallback[0] = True
    return hessians


def _order_in_place(order: Any, weights: torch.Tensor, hessians: torch.Tensor,
                    actorder: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """llm-compressor's `apply_activation_ordering` (columns by descending Hessian diagonal), the Hessian permuted in place."""
    from compressed_tensors.quantization import ActivationOrdering

    if actorder not in (ActivationOrdering.WEIGHT, ActivationOrdering.STATIC) or hessians.shape[0] != 1:
        return order(weights, hessians, actorder)  # none, a batch, or one it refuses
    perm = torch.argsort(torch.diagonal(hessians[0]), descending=True)
    _permute_rows(hessians[0], perm)
    for start in range(0, hessians.shape[1], PERMUTE_ROWS):  # then the columns, a block of rows at a time
        block = hessians[0, start:start + PERMUTE_ROWS]
        block.copy_(block.index_select(1, perm))
    weights.copy_(weights.index_select(2, perm))
    return weights, hessians, perm[None]


def _permute_rows(matrix: torch.Tensor, perm: torch.Tensor) -> None:
    """`matrix[:] = matrix[perm]` with one row of scratch: each cycle of the permutation is followed round."""
    order = perm.tolist()
    placed = [False] * len(order)
    for first in range(len(order)):
        if placed[first] or order[first] == first:
            continue
        held = matrix[first].clone()
        row = first
        while order[row] != first:
            matrix[row] = matrix[order[row]]
            placed[row] = True
            row = order[row]
        matrix[row] = held
        placed[row] = True

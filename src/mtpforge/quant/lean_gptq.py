"""llm-compressor's GPTQ without its copies of the Hessian, for calibration in bounded memory.

At 27B widths down_proj's Hessian is [17408, 17408] float32, 1.1 GiB, and
llm-compressor 0.14 makes copies of it that a bounded run cannot afford:
accumulating (`hessian += inp @ inp.T` builds the product as a temporary of the
same size) and again before solving (`prepare_batch` divides into a new tensor,
then stacks it into another, while the original is still referenced): measured
on a real-width slice, a decoder layer's calibration peaked at 5.3 GiB, 2.4 of
it these copies (bench/calibrate_slice.py). Inside `lean_gptq()` the same
statistic is accumulated in place (`addmm_`) and a batch of one module is
handed to the solver as views of its own tensors, normalized in place. The
solver (`quantize_weight`) is llm-compressor's, unchanged. Batches of several
modules (`batched_quantization`) still go through llm-compressor's own
`prepare_batch`: the caller turns batching off for bounded runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


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
    try:
        yield
    finally:
        base.accumulate_hessian, base.prepare_batch = accumulate, prepare

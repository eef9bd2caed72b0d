"""Streamed round-to-nearest: the stored tensors standing for each chosen weight, computed when the writer reaches them.

A weight is read and quantized when the shard writer reaches its first stored
tensor, and each result is dropped once written, so memory stays bounded by
the largest weight. FP4 global scales need the largest magnitude of the
weight's whole fused group (engines give a fused layer one global scale),
read once per group, when first needed. What the tensors are called and hold
is the scheme's business (`formats.schemes`); torch is imported only when a
weight is quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS, TensorInfo
from mtpforge.families import TensorSpec
from mtpforge.formats.schemes import FP4, INT, Scheme
from mtpforge.surgery.sources import Computed
from mtpforge.surgery.writeplan import TensorCopy

if TYPE_CHECKING:
    import torch


def quantized_copies(ckpt: Checkpoint, info: TensorInfo, scheme: Scheme, group: int | None, amax: Callable[[], float] | None,
                     input_amax: dict[str, float],
                     compute: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None) -> list[TensorCopy]:
    """The stored tensors of `scheme` standing for the weight `info`, with sources that quantize on first read.

    Args:
        amax: the largest magnitude of the weight's fused group (FP4), read when called.
        input_amax: module -> largest |input| (FP4 activations); read when the weight is quantized.
        compute: the weight -> its stored tensors, instead of the scheme's min-max RTN (another observer; GPTQ on the head).
    """
    out, inp = info.shape
    module = info.name.rsplit(".", 1)[0]
    memo: dict[str, torch.Tensor] = {}

    def part(key: str) -> bytes:
        import torch

        from mtpforge.checkpoint.tensors import read_tensor

        if not memo:  # quantize once, when the writer reaches the first stored tensor
            w = read_tensor(ckpt, info)
            memo.update(compute(w) if compute is not None else
                        scheme.quantize(w, group=group, amax=amax() if amax is not None else None,
                                        input_amax=input_amax[module] if scheme.activations else None))
        return memo.pop(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes()

    # INT scales come out in the weight's own dtype.
    stored = scheme.companions(out, inp, group, scale_dtype=info.dtype if scheme.kind == INT else "BF16")
    copies = []
    for key, (dtype, shape) in stored.items():
        name = f"{module}.{key}"
        nbytes = DTYPE_BITS[dtype] // 8 * math.prod(shape)
        copies.append(TensorCopy(name, dtype, shape, Computed(name, partial(part, key), nbytes)))
    return copies


def fused_amax(ckpt: Checkpoint, chosen: dict[str, TensorSpec], scheme: Scheme) -> dict[str, Callable[[], float]]:
    """Per chosen weight, a function giving the largest magnitude over its fused group
    (FP4 only; read once, when first needed)."""
    if scheme.kind != FP4:
        return {}
    groups: dict[str, list[str]] = {}
    for n, s in chosen.items():
        groups.setdefault(s.fused or n, []).append(n)
    memo: dict[str, float] = {}

    def amax_of(key: str) -> float:
        if key not in memo:
            from mtpforge.checkpoint.tensors import read_tensor

            memo[key] = max(float(read_tensor(ckpt, ckpt.tensors[n]).float().abs().max()) for n in groups[key])
        return memo[key]

    return {n: partial(amax_of, s.fused or n) for n, s in chosen.items()}

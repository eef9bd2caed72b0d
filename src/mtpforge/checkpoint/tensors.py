"""Tensor access: one stored tensor, or one logical (possibly quantized) weight, as a torch tensor.

The only place that turns shard bytes into torch tensors; torch is imported by
whoever calls it (quantize, the reference runtime), never by the core verbs.
"""

from __future__ import annotations

import torch

from mtpforge.checkpoint.checkpoint import Checkpoint
from mtpforge.errors import CheckpointError
from mtpforge.formats.dequant import TORCH_DTYPES, dequantize
from mtpforge.formats.stored import StoredTensor, StoredWeight


def read_tensor(ckpt: Checkpoint, info: StoredTensor) -> torch.Tensor:
    """One stored tensor as a torch tensor of its own dtype."""
    with open(ckpt.root / info.shard, "rb") as f:
        f.seek(info.begin)
        raw = bytearray(f.read(info.nbytes))
    if info.dtype not in TORCH_DTYPES:
        raise CheckpointError(f"{info.shard}: tensor {info.name} has dtype {info.dtype}, which torch cannot hold",
                              hint=f"run `mtpforge doctor {ckpt.root}`: the stored format is not one mtpforge reads")
    if len(raw) != info.nbytes:
        raise CheckpointError(f"{info.shard}: tensor {info.name} is cut short ({len(raw)} of {info.nbytes} bytes)",
                              hint=f"the shard is truncated: run `mtpforge doctor {ckpt.root}`")
    if not raw:
        return torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype])
    return torch.frombuffer(raw, dtype=TORCH_DTYPES[info.dtype]).reshape(info.shape)


def read_weight(ckpt: Checkpoint, weight: StoredWeight) -> torch.Tensor:
    """The logical weight `weight` stands for, dequantized to floating point."""
    return dequantize(weight, lambda info: read_tensor(ckpt, info))

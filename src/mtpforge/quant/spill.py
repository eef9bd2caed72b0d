"""The activations llm-compressor caches between decoder layers, kept on disk instead of in host memory.

The sequential pipeline runs every calibration sample through one layer, keeps
each sample's output for the next layer (`IntermediatesCache`) and offers to
keep that cache on a GPU or in host memory, nothing else. Its size is samples x
tokens x hidden x 2 bytes: 10.7 GB at the cards' 512 x 2048 tokens and 27B
widths, more than the rest of a streamed calibration holds. Inside
`activations_on_disk(folder)` each cached tensor of at least `MIN_BYTES` is
written to its own file in `folder` and read back when the pipeline fetches it
(so host memory holds the batch being computed, not the whole set); the file is
removed when the pipeline drops the value. Values are written and read
byte for byte: calibration gives the same result as with the cache in memory.

The reads and writes cost two passes over the cache per layer (calibrate, then
propagate): at 10.7 GB seconds to a minute, against minutes (GPU) or hours
(CPU) of compute per layer.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MIN_BYTES = 1 << 20  # smaller values (token ids, positions, masks) stay in memory: a file each would cost more than they hold


class SpilledTensor:
    """A tensor's bytes in a file of its own, removed when this object is dropped."""

    def __init__(self, tensor: torch.Tensor, path: Path) -> None:
        self.path, self.dtype, self.shape = path, tensor.dtype, tensor.shape
        with path.open("wb") as f:
            f.write(memoryview(_as_bytes(tensor.detach().cpu().contiguous())))
        weakref.finalize(self, _remove, path)

    def read(self) -> torch.Tensor:
        tensor = torch.empty(self.shape, dtype=self.dtype)
        with self.path.open("rb") as f:
            f.readinto(memoryview(_as_bytes(tensor)))
        return tensor


@contextmanager
def activations_on_disk(folder: Path) -> Iterator[Path]:
    """llm-compressor's cache between layers kept in `folder` (created; removed on leaving) while the block runs."""
    from llmcompressor.pipelines.cache import IntermediatesCache, IntermediateValue

    offload = IntermediatesCache.__dict__["_offload_value"]
    onload = IntermediatesCache.__dict__["_onload_value"]
    names = itertools.count()
    folder.mkdir(parents=True, exist_ok=True)

    def offload_to_disk(cls: Any, value: Any, offload_device: Any, onload_device: Any = None) -> Any:
        if isinstance(value, torch.Tensor) and value.nbytes >= MIN_BYTES:
            return IntermediateValue(value=SpilledTensor(value, folder / f"{next(names)}.bin"),
                                     device=onload_device or value.device)
        return offload.__func__(cls, value, offload_device, onload_device)  # containers recurse back into this one

    def onload_from_disk(cls: Any, intermediate: Any) -> Any:
        if isinstance(intermediate.value, SpilledTensor):
            return intermediate.value.read().to(intermediate.device)
        return onload.__func__(cls, intermediate)

    IntermediatesCache._offload_value = classmethod(offload_to_disk)
    IntermediatesCache._onload_value = classmethod(onload_from_disk)
    try:
        yield folder
    finally:
        IntermediatesCache._offload_value = offload
        IntermediatesCache._onload_value = onload
        for leftover in folder.glob("*.bin"):
            _remove(leftover)
        folder.rmdir()


def _as_bytes(tensor: torch.Tensor) -> Any:
    """A writable numpy byte view of a contiguous CPU tensor (any dtype, bfloat16 included: numpy has none)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

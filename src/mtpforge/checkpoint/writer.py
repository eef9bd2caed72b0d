"""Write safetensors files that any reader accepts.

The header is padded with spaces to a multiple of 8 bytes (as the safetensors
library does, so that the data buffer is aligned). A tensor given without data
becomes a hole in a sparse file: the hollow replicas use that to stand for a
27B checkpoint in a few megabytes of disk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mtpforge.checkpoint.header import DTYPE_BITS


@dataclass(frozen=True)
class TensorData:
    """A tensor to write: `data` is its raw little-endian bytes, or None for zeros."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


def encode_header(tensors: Iterable[TensorData], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and padded JSON header for `tensors`, laid out in order."""
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for t in tensors:
        doc[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def write_safetensors(path: Path, tensors: list[TensorData], metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` to `path` and return the file size in bytes.

    Tensors whose `data` is None are left as holes (zeros, sparse on disk).
    """
    header = encode_header(tensors, metadata)
    with open(path, "wb") as f:
        f.write(header)
        pos = len(header)
        for t in tensors:
            if t.data is not None:
                if len(t.data) != t.nbytes:
                    raise ValueError(f"{t.name}: {len(t.data)} bytes given, {t.nbytes} expected")
                f.seek(pos)
                f.write(t.data)
            pos += t.nbytes
        f.truncate(pos)
        f.flush()
        os.fsync(f.fileno())
    return pos

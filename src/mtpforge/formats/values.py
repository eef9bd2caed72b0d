"""Decode tensor bytes into numpy arrays (and back) without torch.

Only what mtpforge inspects needs decoding: norm weights and small integer
tensors. bfloat16 is the top half of a float32, so it widens exactly.
"""

from __future__ import annotations

import numpy as np

_NUMPY = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def decode(dtype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """Return the tensor as a numpy array; bfloat16 widens to float32."""
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype not in _NUMPY:
        raise ValueError(f"cannot decode dtype {dtype} without torch")
    return np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<")).reshape(shape)


def encode(dtype: str, array: np.ndarray) -> bytes:
    """Return the little-endian bytes of `array` stored as `dtype` (BF16 rounds to nearest even)."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        return (rounded >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<")).tobytes()

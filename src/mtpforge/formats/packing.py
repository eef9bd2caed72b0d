"""Pack and unpack quantized values, one symmetric pair per storage format, with compressed-tensors' own helpers.

- INT (`pack-quantized`): signed values of 1-8 bits, offset by 2^(bits-1),
  packed densely LSB-first into int32 words (`pack_to_int32`); along dim 1
  for weights, dim 0 for zero points.
- FP4 E2M1 (`nvfp4-pack-quantized` and modelopt NVFP4): two values a byte,
  low nibble first, sign in bit 3, so -0.0 keeps its sign (`pack_fp4_to_uint8`).

compressed-tensors has every one of these, so nothing is packed by hand here;
it is imported when a tensor is first packed or unpacked (it pulls transformers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pack_int(values: torch.Tensor, bits: int, *, dim: int = 1) -> torch.Tensor:
    """int8 values [rows, cols] of `bits` bits as int32 words, packed along `dim`."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    return pack_to_int32(values, bits, packed_dim=dim)


def unpack_int(packed: torch.Tensor, bits: int, shape: tuple[int, int], *, dim: int = 1) -> torch.Tensor:
    """The int8 values [*shape] that `pack_int(values, bits, dim=dim)` packed."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    return unpack_from_int32(packed, bits, torch.Size(shape), packed_dim=dim)


def pack_fp4(values: torch.Tensor) -> torch.Tensor:
    """E2M1 values [rows, cols] (each exactly representable) as uint8 [rows, cols / 2]."""
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8

    return pack_fp4_to_uint8(values)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """The E2M1 values [rows, 2 * cols] of uint8 [rows, cols], in BF16."""
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    rows, cols = packed.shape
    return unpack_fp4_from_uint8(packed, rows, cols * 2, dtype=torch.bfloat16)

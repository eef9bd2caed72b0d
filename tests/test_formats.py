"""formats/: packing round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

shapes = st.tuples(st.integers(1, 40), st.integers(1, 300))


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([4, 8]), shape=shapes, dim=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_int_unpack_inverts_pack(bits: int, shape: tuple[int, int], dim: int, seed: int) -> None:
    torch = pytest.importorskip("torch")
    from mtpforge.formats.packing import pack_int, unpack_int

    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-(1 << bits - 1), 1 << bits - 1, shape, generator=g, dtype=torch.int8)
    packed = pack_int(values, bits, dim=dim)
    assert packed.dtype == torch.int32
    words = -(-shape[dim] * bits // 32)
    assert packed.shape == ((shape[0], words) if dim == 1 else (words, shape[1]))
    assert torch.equal(unpack_int(packed, bits, shape, dim=dim), values)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_fp4_unpack_inverts_pack_including_negative_zero(shape: tuple[int, int], seed: int) -> None:
    torch = pytest.importorskip("torch")
    from mtpforge.formats.packing import pack_fp4, unpack_fp4

    rows, cols = shape[0], shape[1] * 2
    g = torch.Generator().manual_seed(seed)
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    signs = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    values = (e2m1[torch.randint(0, 8, (rows, cols), generator=g)] * signs).to(torch.bfloat16)  # 0 * -1 is -0.0
    packed = pack_fp4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, cols // 2)
    back = unpack_fp4(packed)
    assert back.dtype == torch.bfloat16 and torch.equal(back, values) and torch.equal(back.signbit(), values.signbit())
    assert torch.equal(pack_fp4(back), packed)  # and every byte is a pair of codes: bytes -> values -> the same bytes

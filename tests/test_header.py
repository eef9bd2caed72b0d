"""The strict safetensors header parser: agrees with the safetensors library on
valid files, and refuses every kind of malformed header with a reason."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from mtpforge.checkpoint.header import MAX_HEADER_BYTES, HeaderError, parse_header, read_header
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.formats.values import decode, encode


def test_reads_what_the_safetensors_library_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    arrays = {"b": np.arange(12, dtype=np.int32).reshape(3, 4), "a": np.ones((2, 5), dtype=np.float16)}
    save_file(arrays, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {"a": ("F16", (2, 5)), "b": ("I32", (3, 4))}
    raw = path.read_bytes()
    b = header.tensors["b"]
    np.testing.assert_array_equal(decode(b.dtype, b.shape, raw[b.begin : b.end]), arrays["b"])


def test_what_we_write_the_safetensors_library_reads(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    values = np.linspace(-3, 3, 24, dtype=np.float32).reshape(4, 6)
    write_safetensors(path, [TensorData("x", "F32", (4, 6), encode("F32", values)),
                             TensorData("bf", "BF16", (4, 6), encode("BF16", values)),
                             TensorData("hole", "I64", (3,))], {"k": "v"})
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"k": "v"}
        np.testing.assert_array_equal(f.get_tensor("x"), values)
        np.testing.assert_array_equal(f.get_tensor("hole"), np.zeros(3, dtype=np.int64))
    # bfloat16 keeps 8 mantissa bits: round-to-nearest error is within 2^-9 relative
    header = read_header(path)
    bf = header.tensors["bf"]
    back = decode("BF16", bf.shape, path.read_bytes()[bf.begin : bf.end])
    np.testing.assert_allclose(back, values, rtol=2**-8)


def _file(header: object, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


BAD_FILES = {
    "empty file": b"",
    "short length prefix": b"\x01\x02\x03",
    "length beyond file": struct.pack("<Q", 1000) + b"{}",
    "length over the limit": struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}",
    "not utf-8": _file(None, raw_header=b'{"\xff": 1}'),
    "not starting with brace": _file(None, raw_header=b' {"a": 1}'),
    "not json": _file(None, raw_header=b"{not json}"),
    "json array": _file(None, raw_header=b"[1, 2]  "),
    "duplicate keys": _file(None, raw_header=b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                             b'"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}') + b"\x00",
    "metadata not strings": _file({"__metadata__": {"a": 1}}),
    "unknown dtype": _file({"t": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\x00"),
    "missing field": _file({"t": {"dtype": "U8", "shape": [1]}}, b"\x00"),
    "extra field": _file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, b"\x00"),
    "negative dim": _file({"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\x00"),
    "boolean dim": _file({"t": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\x00"),
    "offsets reversed": _file({"t": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, b"\x00"),
    "size disagrees with shape": _file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4),
    "hole between tensors": _file({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                                   "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]}}, b"\x00" * 3),
    "overlapping tensors": _file({"a": {"dtype": "U16", "shape": [1], "data_offsets": [0, 2]},
                                  "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\x00" * 2),
    "truncated data": _file({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 10),
    "trailing bytes": _file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x00" * 5),
    "deeply nested json": _file(None, raw_header=b"{" + b'"a":[' * 50000 + b"]" * 50000 + b"}"),
    "sub-byte dtype with odd count": _file({"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}, b"\x00"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_headers_are_refused_with_the_file_named(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD_FILES[case])
    with pytest.raises(HeaderError) as e:
        read_header(path)
    assert "bad.safetensors" in str(e.value) and "invalid safetensors header" in str(e.value)
    assert e.value.hint


def test_zero_sized_tensors_and_f4_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_file({"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
                            "f": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}, b"\x00\x00"))
    header = read_header(path)
    assert header.tensors["e"].nbytes == 0 and header.tensors["f"].nbytes == 2


valid_entries = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(["U8", "F16", "BF16", "F32", "I64"]),
              st.lists(st.integers(0, 4), max_size=3)),
    max_size=5, unique_by=lambda e: e[0],
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(valid_entries)
def test_round_trip_of_any_valid_layout(entries: list[tuple[str, str, list[int]]]) -> None:
    tensors = [TensorData(n, d, tuple(s)) for n, d, s in entries if n != "__metadata__"]
    from mtpforge.checkpoint.writer import encode_header

    raw = encode_header(tensors)
    size = len(raw) + sum(t.nbytes for t in tensors)
    header = parse_header(raw, size, "x.safetensors")
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {t.name: (t.dtype, t.shape) for t in tensors}


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_fuzz_arbitrary_bytes_never_escape_as_anything_but_header_error(blob: bytes, extra: int) -> None:
    try:
        header = parse_header(blob, len(blob) + extra, "fuzz.safetensors")
    except HeaderError:
        return
    # Anything accepted must satisfy the invariants.
    assert sum(t.nbytes for t in header.tensors.values()) == header.file_bytes - header.data_start


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8),
    max_size=4), st.integers(0, 64))
def test_fuzz_structured_json_headers(doc: dict[str, object], data_len: int) -> None:
    body = json.dumps(doc).encode()
    raw = struct.pack("<Q", len(body)) + body
    try:
        header = parse_header(raw, len(raw) + data_len, "fuzz.safetensors")
    except HeaderError:
        return
    assert sum(t.nbytes for t in header.tensors.values()) == data_len

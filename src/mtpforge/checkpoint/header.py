"""Strict reader of one safetensors header; never touches tensor bytes.

The format (huggingface/safetensors README, "Format"): an 8-byte little-endian
length N, then N bytes of UTF-8 JSON that begin with `{` (trailing spaces are
padding), then the data buffer. Every rule of that spec is enforced here, so
that a shard that passes can be read by any loader and a hostile one is
refused before a single offset is trusted:

- N is bounded and the file holds all N bytes;
- the JSON is an object without duplicate keys; `__metadata__` maps str to str;
- each entry has exactly `dtype`, `shape`, `data_offsets`; the dtype is known;
- the byte span of each tensor equals shape x dtype size;
- the spans, sorted, tile the data buffer exactly: no hole, no overlap, and
  the buffer ends where the file ends.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import add, attrgetter, mul, sub
from pathlib import Path
from typing import Any, NamedTuple

from mtpforge.checkpoint.paths import open_regular
from mtpforge.errors import CheckpointError

# The safetensors library refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_SPAN = attrgetter("begin", "end")
_new_info = tuple.__new__  # TensorInfo(...) without the named tuple's Python-level __new__: half the cost per tensor


class HeaderError(CheckpointError):
    """A safetensors header breaks the format: the shard cannot be trusted."""


class TensorInfo(NamedTuple):
    """Where one tensor lives: its shard, dtype, shape and absolute byte span.

    A named tuple, not a frozen dataclass: a 400K-tensor index builds 400K of them, and a tuple is
    made several times faster (bench/doctor_scale.py).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offset in the file
    end: int
    shard: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one `.safetensors` file."""

    file_name: str
    file_bytes: int
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: Path, name: str | None = None) -> ShardHeader:
    """Read and validate the header of the safetensors file at `path`.

    Args:
        path: a `.safetensors` file (opened without following a final symlink: pass the resolved path).
        name: the shard's name in its checkpoint, when `path` is where a symlink led (default: `path.name`).

    Returns:
        The header, with absolute byte offsets for every tensor.

    Raises:
        HeaderError: the file is truncated or breaks any rule of the format.
    """
    try:
        with open_regular(path) as f:  # never blocks on a FIFO, never follows a swapped-in symlink
            file_bytes = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _err(path, f"file is {file_bytes} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES or 8 + n > file_bytes:
                return parse_header(prefix, file_bytes, name or path.name)  # raises with the reason
            raw = prefix + f.read(n)
    except OSError as e:
        raise HeaderError(f"{path}: cannot read: {e.strerror or e}", hint="check the file's permissions") from e
    return parse_header(raw, file_bytes, name or path.name)


def parse_header(raw: bytes, file_bytes: int, file_name: str) -> ShardHeader:
    """Validate the first `8 + N` bytes of a safetensors file of `file_bytes` bytes.

    Args:
        raw: the length prefix followed by the header bytes.
        file_bytes: the size of the whole file, to check the data buffer's extent.
        file_name: the shard's name, for messages.

    Returns:
        The validated header.

    Raises:
        HeaderError: naming the file and the broken rule.
    """
    if len(raw) < 8:
        raise _err(file_name, "shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _err(file_name, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_bytes or len(raw) < 8 + n:
        raise _err(file_name, f"truncated: header claims {n} bytes but the file has {file_bytes - 8}")
    body = raw[8 : 8 + n]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err(file_name, f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.startswith("{"):
        raise _err(file_name, "header JSON does not start with '{'")
    doc = _load_json(file_name, text.rstrip(" "))
    if not isinstance(doc, dict):
        raise _err(file_name, "header JSON is not an object")

    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _err(file_name, "__metadata__ must map strings to strings")

    data_start = 8 + n
    tensors = _well_formed(doc, data_start, file_name, file_bytes)
    if tensors is None:  # some rule is broken: check entry by entry, to name the tensor and the rule
        tensors = {name: _tensor_entry(file_name, name, entry, data_start) for name, entry in doc.items()}
        _check_tiling(file_name, tensors, data_start, file_bytes)
    return ShardHeader(file_name, file_bytes, data_start, tensors, metadata)


def _well_formed(doc: dict[str, Any], data_start: int, file_name: str, file_bytes: int) -> dict[str, TensorInfo] | None:
    """The tensors of `doc` when every rule holds, else None; column by column, in C loops.

    The same rules as `_tensor_entry` and `_check_tiling`, asked of all entries at once (a set of types, a
    minimum, a pairwise comparison) instead of one entry at a time: on a 400K-tensor index the per-entry
    Python work, not the JSON parse, was the cost. Any doubt returns None and the slow path explains.
    """
    names, entries = list(doc), list(doc.values())
    if not entries:
        return {} if data_start == file_bytes else None
    try:
        if set(map(type, entries)) != {dict} or set(map(len, entries)) != {3} or "" in doc:
            return None
        dtypes = [e["dtype"] for e in entries]
        shapes = [e["shape"] for e in entries]
        offsets = [e["data_offsets"] for e in entries]
        if set(map(type, dtypes)) != {str} or set(map(type, shapes)) != {list} or set(map(type, offsets)) != {list}:
            return None
        dims = list(chain.from_iterable(shapes))
        if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
            return None
        if set(map(len, offsets)) != {2}:
            return None
        begins, ends = [o[0] for o in offsets], [o[1] for o in offsets]
        if set(map(type, begins)) | set(map(type, ends)) != {int} or min(begins) < 0:
            return None
        bits = list(map(DTYPE_BITS.__getitem__, dtypes))
    except KeyError:  # a missing field or an unknown dtype
        return None
    sizes = list(map(sub, ends, begins))
    if min(sizes) < 0 or list(map(mul, map(math.prod, shapes), bits)) != list(map(mul, sizes, repeat(8))):
        return None
    spans = sorted(zip(begins, ends, strict=True))  # they must tile [0, file_bytes - data_start) exactly
    if spans[0][0] != 0 or spans[-1][1] != file_bytes - data_start or \
            [b for b, _ in spans[1:]] != [e for _, e in spans[:-1]]:
        return None
    starts, stops = map(add, begins, repeat(data_start)), map(add, ends, repeat(data_start))
    rows = zip(names, dtypes, map(tuple, shapes), starts, stops, repeat(file_name))
    return dict(zip(names, map(_new_info, repeat(TensorInfo), rows), strict=True))


def _load_json(file_name: str, text: str) -> Any:
    """The header document, refusing duplicate keys at any level.

    A duplicate-key hook on every object costs seconds on a 400K-tensor index, so the C parser runs
    alone first, and the hook only when the key counts could hide a duplicate: every entry has exactly
    one `"dtype"`, `"shape"` and `"data_offsets"` key, so a duplicate name (which the parser collapses)
    or a repeated field leaves a count above the number of entries. Anything unusual takes the slow path.
    """
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            entries = len(doc) - ("__metadata__" in doc)
            if all(text.count(f'"{key}"') == entries for key in ("dtype", "shape", "data_offsets")):
                return doc
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise _err(file_name, f"header is not valid JSON: {e}") from None


def _tensor_entry(file_name: str, name: str, entry: Any, data_start: int) -> TensorInfo:
    """The entry as a `TensorInfo`: a fast path for a well-formed entry, the rule-by-rule check otherwise."""
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        begin, end = offsets
        bits = DTYPE_BITS[dtype]
    except (TypeError, KeyError, ValueError):
        return _checked_entry(file_name, name, entry, data_start)
    # `type(x) is int` refuses bools, as _is_uint does; loops beat all(...) on shapes of 0-4 dims.
    ok = len(entry) == 3 and type(dtype) is str and type(shape) is list and type(offsets) is list \
        and type(begin) is int and type(end) is int and 0 <= begin <= end and bool(name)
    numel = 1
    if ok:
        for d in shape:
            if type(d) is not int or d < 0:
                ok = False
                break
            numel *= d
    if not ok or numel * bits != (end - begin) * 8:
        return _checked_entry(file_name, name, entry, data_start)
    return _new_info(TensorInfo, (name, dtype, tuple(shape), data_start + begin, data_start + end, file_name))


def _checked_entry(file_name: str, name: str, entry: Any, data_start: int) -> TensorInfo:
    where = f"tensor {name!r}"
    if not name:
        raise _err(file_name, "a tensor has an empty name")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _err(file_name, f"{where}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _err(file_name, f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise _err(file_name, f"{where}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise _err(file_name, f"{where}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise _err(file_name, f"{where}: data_offsets begin {begin} > end {end}")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _err(file_name, f"{where}: {dtype} x {shape} is not a whole number of bytes")
    if end - begin != bits // 8:
        raise _err(
            file_name,
            f"{where}: spans {end - begin} bytes but {dtype} x {shape} needs {bits // 8}",
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end, file_name)


def _check_tiling(file_name: str, tensors: dict[str, TensorInfo], data_start: int, file_bytes: int) -> None:
    cursor = data_start
    for t in sorted(tensors.values(), key=_SPAN):
        if t.begin < cursor:
            raise _err(file_name, f"tensor {t.name!r} overlaps the tensor before it")
        if t.begin > cursor:
            raise _err(file_name, f"hole of {t.begin - cursor} bytes before tensor {t.name!r}")
        cursor = t.end
    if cursor != file_bytes:
        if cursor > file_bytes:
            raise _err(file_name, f"truncated: tensors need {cursor} bytes but the file has {file_bytes}")
        raise _err(file_name, f"{file_bytes - cursor} trailing bytes after the last tensor")


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; only a short dict names the duplicate
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def _err(file: Path | str, reason: str) -> HeaderError:
    return HeaderError(f"{file}: invalid safetensors header: {reason}", hint="re-download or re-export this shard")

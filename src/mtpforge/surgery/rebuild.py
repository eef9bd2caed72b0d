"""The part every writing verb shares (graft, strip, fix, quantize): which input
files to link, which shards to rewrite without some tensors or with some
replaced, and the output's weight map.

A shard keeps its name when it is rewritten, so the rest of the index stays
as it was; a shard left empty disappears. Shards the index does not reference
stay unreferenced (surgery does not fix what it was not asked to).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.checkpoint import HF_QUANT_CONFIG
from mtpforge.checkpoint.header import TensorInfo
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.errors import CheckpointError
from mtpforge.surgery.sources import FileRange
from mtpforge.surgery.writeplan import NewShard, TensorCopy

REWRITTEN_FILES = frozenset({"config.json", INDEX_NAME, HF_QUANT_CONFIG})
Replace = Callable[[TensorInfo], Sequence[TensorCopy]]


@dataclass(frozen=True)
class Rebuild:
    """The input checkpoint's files after dropping tensors and adding shards."""

    linked: tuple[str, ...]
    written: tuple[NewShard, ...]
    weight_map: dict[str, str]
    sizes: dict[str, int]  # tensor name -> bytes, for total_size
    linked_bytes: int
    dropped_files: tuple[str, ...]


def require_readable(ckpt: Checkpoint) -> None:
    """Refuse surgery on a checkpoint whose shards cannot all be read."""
    problems = [str(e) for e in ckpt.header_errors.values()]
    if ckpt.index is not None:
        problems += [f"{s}: referenced by {INDEX_NAME} but missing"
                     for s in ckpt.index.shard_names if not (ckpt.root / s).exists()]
    if problems:
        raise CheckpointError(f"{ckpt.root}: cannot operate on a damaged checkpoint: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                              hint=f"run `mtpforge doctor {ckpt.root}` and restore the damaged files first")


def rebuild(ckpt: Checkpoint, *, drop: Collection[str] = frozenset(), add: tuple[NewShard, ...] = (),
            replace: Mapping[str, Replace] | None = None) -> Rebuild:
    """The input's files with the tensors `drop` removed, the tensors `replace` names written as it says, and the
    shards `add` added. A shard with nothing dropped or replaced is linked; the others are rewritten under their name.

    Args:
        replace: tensor name -> the tensors written in its place, given its header entry (quantize: the
            weight's quantized companions, whose bytes are computed only when the writer reaches them).
    """
    require_readable(ckpt)
    replace = replace or {}
    referenced = set(ckpt.index.weight_map.values()) if ckpt.index is not None else set(ckpt.headers)
    linked, written, dropped = [], [], []
    weight_map: dict[str, str] = {}
    sizes: dict[str, int] = {}
    linked_bytes = 0
    for name, header in sorted(ckpt.headers.items()):
        kept = [t for t in sorted(header.tensors.values(), key=lambda t: t.begin) if t.name not in drop]
        if not kept:
            dropped.append(name)
            continue
        if len(kept) == len(header.tensors) and not any(t.name in replace for t in kept):
            linked.append(name)
            linked_bytes += header.file_bytes
            out = [(t.name, t.nbytes) for t in kept]
        else:
            copies: list[TensorCopy] = []
            for t in kept:
                copies += replace[t.name](t) if t.name in replace else [_copy(ckpt, name, t)]
            written.append(NewShard(name, tuple(copies)))
            out = [(c.name, c.nbytes) for c in copies]
        if name in referenced:
            weight_map.update({n: name for n, _ in out})
            sizes.update(out)
    taken = set(linked) | {s.name for s in written}
    for shard in add:
        if shard.name in taken or shard.name in ckpt.files - set(ckpt.headers) or shard.name in ckpt.unsafe_files:
            raise CheckpointError(f"{ckpt.root / shard.name} already exists and is kept", hint="choose another shard name")
        weight_map.update({t.name: shard.name for t in shard.tensors})
        sizes.update({t.name: t.nbytes for t in shard.tensors})
    other = sorted(f for f in ckpt.files if not f.endswith(".safetensors") and f not in REWRITTEN_FILES)
    return Rebuild(tuple(linked + other), tuple(written) + tuple(add), weight_map, sizes, linked_bytes, tuple(dropped))


def _copy(ckpt: Checkpoint, shard: str, t: TensorInfo) -> TensorCopy:
    return TensorCopy(t.name, t.dtype, t.shape, FileRange(ckpt.root / shard, t.begin, t.end))


def hf_quant_config(ckpt: Checkpoint) -> dict | None:
    """The raw hf_quant_config.json document, when the checkpoint has one that parses."""
    if HF_QUANT_CONFIG not in ckpt.files:
        return None
    from mtpforge.checkpoint.index import read_json

    doc = read_json(ckpt.root / HF_QUANT_CONFIG, ckpt.root)
    return doc if isinstance(doc, dict) else None


"""The part every surgery shares: which input files to link, which shards to
rewrite without some tensors, and the output's weight map.

A shard keeps its name when it is rewritten, so the rest of the index stays
as it was; a shard left empty disappears. Shards the index does not reference
stay unreferenced (surgery does not fix what it was not asked to).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.checkpoint import HF_QUANT_CONFIG
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.errors import CheckpointError
from mtpforge.surgery.writeplan import NewShard, TensorCopy
from mtpforge.surgery.sources import FileRange

REWRITTEN_FILES = frozenset({"config.json", INDEX_NAME, HF_QUANT_CONFIG})


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
        problems += [f"{s}: referenced by {INDEX_NAME} but missing" for s in ckpt.index.shard_names if not (ckpt.root / s).exists()]
    if problems:
        raise CheckpointError(f"{ckpt.root}: cannot operate on a damaged checkpoint: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                              hint=f"run `mtpforge doctor {ckpt.root}` and restore the damaged files first")


def rebuild(ckpt: Checkpoint, *, drop: set[str], add: tuple[NewShard, ...] = ()) -> Rebuild:
    """WritePlan the input's files with the tensors `drop` removed and the shards `add` added."""
    require_readable(ckpt)
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
        if len(kept) == len(header.tensors):
            linked.append(name)
            linked_bytes += header.file_bytes
        else:
            written.append(NewShard(name, tuple(TensorCopy(t.name, t.dtype, t.shape, FileRange(ckpt.root / name, t.begin, t.end))
                                                for t in kept)))
        if name in referenced:
            weight_map.update({t.name: name for t in kept})
            sizes.update({t.name: t.nbytes for t in kept})
    taken = set(linked) | {s.name for s in written}
    for shard in add:
        if shard.name in taken or shard.name in ckpt.files - set(ckpt.headers):
            raise CheckpointError(f"{ckpt.root / shard.name} already exists and is kept", hint="choose another shard name")
        weight_map.update({t.name: shard.name for t in shard.tensors})
        sizes.update({t.name: t.nbytes for t in shard.tensors})
    other = sorted(f for f in ckpt.files if not f.endswith(".safetensors") and f not in REWRITTEN_FILES)
    return Rebuild(tuple(linked + other), tuple(written) + tuple(add), weight_map, sizes, linked_bytes, tuple(dropped))


def hf_quant_config(ckpt: Checkpoint) -> dict | None:  # type: ignore[type-arg]
    """The raw hf_quant_config.json document, when the checkpoint has one that parses."""
    if HF_QUANT_CONFIG not in ckpt.files:
        return None
    from mtpforge.checkpoint.index import read_json

    doc = read_json(ckpt.root / HF_QUANT_CONFIG, ckpt.root)
    return doc if isinstance(doc, dict) else None


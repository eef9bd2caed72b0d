"""The file layout a build publishes: a recipe's `[publish]` table, applied to a finished checkpoint.

The seeds ship their tensors in different files, and users and engines rely on it (seed 004: "keep both alongside
the main shards or vLLM will boot without spec decoding"):

    seed 001:  model-00001-of-00002.safetensors (trunk) + model-00002-of-00002.safetensors (the BF16 head)
               [publish] shards = 1, head = "next"
    seed 003:  model.safetensors + visual_mtp.safetensors (vision tower and head)
               [publish] shards = 1, shard_name = "model.safetensors", head = "visual_mtp.safetensors",
               vision = "visual_mtp.safetensors"
    seed 004:  model-0000{1..5}-of-00005.safetensors + mtp.safetensors, indexed
               [publish] shards = 5, head = "mtp.safetensors"

Keys: `shards` (how many trunk files) or `shard_size` (at most this much per trunk file, "5GB"); `shard_name`, a
pattern with `{index}` and `{count}` (default `model-{index:05d}-of-{count:05d}.safetensors`; `count` counts the
numbered files, the head's and the tower's too when they are `next`); `head` and `vision`: `trunk` (with the trunk,
the default), `next` (their own numbered file after the trunk's) or a file name. The index lists every tensor.

Every tensor is copied byte for byte, in the order of its layer (so a shard holds whole layers); the layout never
changes a value, a dtype or a name, only which file a tensor is in, and a head the base already had moves out of the
source shards as a grafted one does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.errors import UsageError
from mtpforge.families import MTP, VISION, detect_family
from mtpforge.surgery.sources import FileRange
from mtpforge.surgery.writeplan import NewShard, TensorCopy, WritePlan, check_file_name, index_document
from mtpforge.units import parse_size

LAYOUT_KEYS = {"shards", "shard_size", "shard_name", "head", "vision"}
PUBLISH_KEYS = LAYOUT_KEYS | {"chat_template"}  # the template step: publish/template.py
DEFAULT_PATTERN = "model-{index:05d}-of-{count:05d}.safetensors"
PLACES = ("trunk", "next")


def check_layout(layout: dict[str, Any]) -> None:
    """Refuse a `[publish]` table with unknown keys or values (UsageError naming the key)."""
    unknown = set(layout) - PUBLISH_KEYS
    if unknown:
        raise UsageError(f"unknown [publish] keys {sorted(unknown)}", hint=f"keys: {', '.join(sorted(PUBLISH_KEYS))}")
    if "shards" in layout and "shard_size" in layout:
        raise UsageError("[publish] gives both shards and shard_size", hint="give one: a count, or a size per file")
    shards = layout.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise UsageError(f"[publish] shards = {shards!r}: a count of 1 or more", hint="shards = 5")
    if "shard_size" in layout:
        parse_size(str(layout["shard_size"]), option="[publish] shard_size")
    pattern = layout.get("shard_name", DEFAULT_PATTERN)
    try:
        check_file_name(pattern.format(index=1, count=1), option="[publish] shard_name", suffix=".safetensors")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise UsageError(f"[publish] shard_name {pattern!r} is not a pattern of {{index}} and {{count}}: {e}",
                         hint=f"shard_name = {DEFAULT_PATTERN!r}") from None
    for part in ("head", "vision"):
        place = layout.get(part, "trunk")
        if not isinstance(place, str):
            raise UsageError(f"[publish] {part} = {place!r}: trunk, next or a file name", hint=f'{part} = "mtp.safetensors"')
        if place not in PLACES:
            check_file_name(place, option=f"[publish] {part}", suffix=".safetensors")


def layout_plan(ckpt: Checkpoint, layout: dict[str, Any]) -> WritePlan:
    """The plan rewriting `ckpt`'s tensors into the files `layout` names (see the module docstring).

    Raises:
        UsageError: a bad layout, or one that names the same file for the trunk and a part.
    """
    check_layout(layout)
    family = detect_family(ckpt.config)
    parts: dict[str, list[TensorCopy]] = {"trunk": [], MTP: [], VISION: []}
    for shard, header in sorted(ckpt.headers.items()):
        for t in header.tensors.values():
            group = family.group_of(t.name)
            key = group if group in (MTP, VISION) and layout.get("head" if group == MTP else "vision", "trunk") != "trunk" \
                else "trunk"
            parts[key].append(TensorCopy(t.name, t.dtype, t.shape, FileRange(ckpt.root / shard, t.begin, t.end)))
    for tensors in parts.values():
        tensors.sort(key=lambda c: _natural(c.name))
    trunk_files = _split(parts["trunk"], layout)
    extra = [p for p in (MTP, VISION) if parts[p] and layout.get("head" if p == MTP else "vision") == "next"]
    count = len(trunk_files) + len(extra)
    pattern = layout.get("shard_name", DEFAULT_PATTERN)
    files: dict[str, list[TensorCopy]] = {}
    for i, tensors in enumerate(trunk_files, 1):
        files.setdefault(pattern.format(index=i, count=count), []).extend(tensors)
    for i, part in enumerate(extra, len(trunk_files) + 1):
        files.setdefault(pattern.format(index=i, count=count), []).extend(parts[part])
    for part, key in ((MTP, "head"), (VISION, "vision")):
        place = layout.get(key, "trunk")
        if parts[part] and place not in PLACES:
            if place in {pattern.format(index=i, count=count) for i in range(1, len(trunk_files) + 1)}:
                raise UsageError(f"[publish] {key} = {place!r} is also a trunk file", hint="name a file of its own")
            files.setdefault(place, []).extend(parts[part])
    if len(files) != len({n.lower() for n in files}):
        raise UsageError("[publish] names two files that differ only in case", hint="name each file once")
    written = tuple(NewShard(name, tuple(ts)) for name, ts in files.items())
    weight_map = {t.name: s.name for s in written for t in s.tensors}
    sizes = {t.name: t.nbytes for s in written for t in s.tensors}
    json_files: dict[str, Any] = {"config.json": ckpt.config, INDEX_NAME: index_document(weight_map, sizes)}
    kept = tuple(sorted(f for f in ckpt.files if not f.endswith(".safetensors") and f not in (INDEX_NAME, "config.json")))
    actions = [f"write {name}: {len(ts)} tensors" for name, ts in files.items()]
    return WritePlan("publish", Path(ckpt.root), kept, written, json_files, 0, tuple(actions))


def _split(tensors: list[TensorCopy], layout: dict[str, Any]) -> list[list[TensorCopy]]:
    """The trunk in `shards` files of about equal bytes (a tensor goes where its middle byte falls), or in files of at
    most `shard_size` filled in order; a tensor is never split."""
    if "shard_size" not in layout:
        count = layout.get("shards", 1)
        total = max(1, sum(t.nbytes for t in tensors))
        files: list[list[TensorCopy]] = [[] for _ in range(count)]
        running = 0
        for t in tensors:
            files[min(count - 1, (2 * running + t.nbytes) * count // (2 * total))].append(t)
            running += t.nbytes
        return [f for f in files if f] or [[]]
    limit = parse_size(str(layout["shard_size"]), option="[publish] shard_size")
    files = [[]]
    size = 0
    for t in tensors:
        if files[-1] and size + t.nbytes > limit:
            files.append([])
            size = 0
        files[-1].append(t)
        size += t.nbytes
    return files


def _natural(name: str) -> list[Any]:
    """layers.2 before layers.10: the name's digit runs compared as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]

"""`model.safetensors.index.json`: read, validate, and name-check its shard paths.

A shard path comes from a file someone downloaded, so it is untrusted: it must
be one plain file name, stay inside the checkpoint directory once symlinks are
resolved, and name a regular file (checkpoint/paths.py). `total_size` is the sum of tensor bytes (what
transformers' `save_pretrained` writes), not of file sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import paths
from mtpforge.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
MAX_JSON_DEPTH = 64  # configs, indexes and tokenizer files nest a few levels; deeper is hostile


@dataclass(frozen=True)
class Index:
    """The parsed index: which shard holds each tensor, and the declared total size."""

    weight_map: dict[str, str]
    total_size: int | None

    @property
    def shard_names(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def read_index(root: Path) -> Index | None:
    """Read `root/model.safetensors.index.json`, or return None when there is none.

    Raises:
        CheckpointError: the index is not valid JSON, is shaped wrongly, or maps a
            tensor to a path outside the directory.
    """
    path = root / INDEX_NAME
    if not paths.exists(root, INDEX_NAME):
        return None
    doc = read_json(path, root)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    # JSON keys are always strings; the values' types are checked as a set, in C (400K entries on a big MoE).
    if not isinstance(weight_map, dict) or not set(map(type, weight_map.values())) <= {str}:
        raise CheckpointError(f"{path}: 'weight_map' must map tensor names to shard file names")
    first_tensor = {shard: tensor for tensor, shard in reversed(weight_map.items())}
    for shard, tensor in sorted(first_tensor.items()):  # once per shard, not per tensor
        check_inside(root, shard, what=f"{INDEX_NAME} maps {tensor!r} to")
    metadata = doc.get("metadata") or {}
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        # Some exporters write a float; accept an integral one, refuse nonsense.
        if isinstance(total, float) and total.is_integer() and total >= 0:
            total = int(total)
        else:
            raise CheckpointError(f"{path}: metadata.total_size must be a non-negative integer, got {total!r}")
    return Index(dict(weight_map), total)


def check_inside(root: Path, relative: object, *, what: str) -> Path:
    """Resolve `relative` under `root`, refusing a name that is not one plain file name, a symlink that
    leaves `root` (one into the Hugging Face cache's `blobs/` is allowed) or a file that is not regular
    (checkpoint/paths.py)."""
    return paths.resolve(root, relative, what=what)


def read_json(path: Path, root: Path) -> Any:
    """Parse a JSON file of the checkpoint, with a clear error when it is broken, unsafe or nested absurdly deep."""
    raw = paths.read_bytes(root, path.relative_to(root).as_posix(), what="file")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}", hint="restore this file from the original checkpoint") from e
    except RecursionError:  # deeper than json's own recursion limit
        too_deep = True
    else:
        too_deep = _depth_over(doc, MAX_JSON_DEPTH)
    if too_deep:
        raise CheckpointError(f"{path}: JSON nested more than {MAX_JSON_DEPTH} levels deep: not a checkpoint file",
                              hint="restore this file from the original checkpoint")
    return doc


def _depth_over(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        nested = [c for c in children if type(c) is dict or type(c) is list]  # json.loads makes no subclasses
        stack.extend(zip(nested, repeat(depth + 1)))
    return False

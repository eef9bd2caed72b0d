"""Hollow replicas: header-exact copies of a real checkpoint's inventory whose
tensor data is a hole in a sparse file.

The Qwen3.6-27B replica has the real config, the real 1199 tensor names,
shapes and dtypes, 15 shards and an index, and reads as 51.75 GB of zeros
while using a few megabytes of disk. Every verb can run on it at full scale.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from mtpforge.checkpoint.writer import TensorData
from mtpforge.testing.factory import write_shards, write_tokenizer_files

QWEN36_27B = "qwen3.6-27b"


def reference_inventory(name: str = QWEN36_27B) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The shipped config and tensor list (name, shape, dtype) of a real checkpoint."""
    data = resources.files("mtpforge.testing") / "data"
    config = json.loads((data / f"{name}.config.json").read_text())
    tensors = json.loads((data / f"{name}.tensors.json").read_text())["tensors"]
    return config, tensors


def make_hollow_replica(out: Path, name: str = QWEN36_27B, *, shards: int = 15, drop: tuple[str, ...] = ()) -> Path:
    """Write a hollow replica of the reference checkpoint `name` into `out` and return `out`.

    Args:
        out: the directory to create (must not exist).
        name: which shipped reference inventory to copy.
        shards: how many shard files to split it into (the real one has 15).
        drop: leading name components to leave out, e.g. `("mtp",)` for a head-less finetune.
    """
    config, inventory = reference_inventory(name)
    out.mkdir(parents=True)
    tensors = [TensorData(t["name"], t["dtype"], tuple(t["shape"])) for t in inventory
               if t["name"].split(".")[0] not in drop]
    write_shards(out, tensors, shards=shards, index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(out, vocab_size=16)
    return out

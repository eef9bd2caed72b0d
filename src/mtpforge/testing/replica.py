"""Hollow replicas: header-exact copies of a real checkpoint's inventory whose
tensor data is a hole in a sparse file.

The Qwen3.6-27B replica has the real config, the real 1199 tensor names,
shapes and dtypes, 15 shards and an index, and reads as 51.75 GB of zeros
while using a few megabytes of disk. Every verb can run on it at full scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from mtpforge.checkpoint.writer import TensorData
from mtpforge.families import detect_family
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


def scaled_config(config: dict[str, Any], *, layers: int) -> dict[str, Any]:
    """A public config with its trunk cut to `layers` decoder layers (every other field as published),
    keeping at least one MoE layer after `first_k_dense_replace` so the MoE rules are exercised."""
    out = dict(config)
    out["num_hidden_layers"] = max(layers, int(config.get("first_k_dense_replace") or 0) + 1)
    return out


def make_family_replica(out: Path, config: dict[str, Any], *, layers: int = 4, shards: int = 3,
                        fused_experts: bool = False, tied_copies: bool = True,
                        drop: Callable[[str], bool] = lambda name: False) -> Path:
    """Write a hollow checkpoint of any family from a public `config` (cut to `layers` trunk layers).

    Every tensor the family expects is there with its real name, shape and dtype, as zeros in sparse
    files, with an index, so inspect and doctor run on it as on the published checkpoint.

    Args:
        out: the directory to create (must not exist).
        config: a public config.json (its `quantization_config` is left out: the shards are unquantized).
        layers: trunk decoder layers to keep.
        shards: shard files, with an index.
        fused_experts: store MoE experts as fused 3-D tensors rather than one per expert.
        tied_copies: ship the optional MTP copies of the embedding and lm_head (DeepSeek-R1 does, GLM-5 does not).
        drop: tensors to leave out (by name), to break the replica on purpose.
    """
    from mtpforge.families import detect_family

    config = {k: v for k, v in scaled_config(config, layers=layers).items() if k != "quantization_config"}
    family = detect_family(config)
    out.mkdir(parents=True)
    expected = family.expected(config, fused_experts=fused_experts)
    tensors = [TensorData(name, spec.dtype, spec.shape) for name, spec in expected.items()
               if (tied_copies or not spec.optional) and not drop(name)]
    write_shards(out, tensors, shards=shards, index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(out, vocab_size=16)
    return out


def write_random_slice(out: Path, layers: dict[int, int], name: str = QWEN36_27B, *, shard_bytes: int = 2 << 30) -> Path:
    """A real-width slice of the reference checkpoint `name` with random N(0, 0.02) values, for benchmarks that compute.

    Every real dimension is kept: the full embeddings, lm_head, MTP head and vision tower, and the decoder layers
    `layers` (real index -> slice index, e.g. `{0: 0, 3: 1}`: one Gated DeltaNet and one full-attention layer of
    Qwen3.6-27B), renumbered, with `layer_types` and `num_hidden_layers` to match. Seeded: the same call writes the same bytes.
    """
    import torch
    from safetensors.torch import save_file

    config, inventory = reference_inventory(name)
    family = detect_family(config)
    text = family.text_config(config)
    text["layer_types"] = [text["layer_types"][real] for real in sorted(layers, key=layers.__getitem__)]
    text["num_hidden_layers"] = len(layers)
    trunk_layers = family.trunk_prefix(config) + ".layers."
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    index: dict[str, str] = {}
    current: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        if current:
            shard = f"model-{len(set(index.values())) + 1:05d}.safetensors"
            save_file(current, out / shard, metadata={"format": "pt"})
            index.update(dict.fromkeys(current, shard))
            current.clear()

    for t in inventory:
        renamed = _slice_name(t["name"], trunk_layers, layers)
        if renamed is None:
            continue
        dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[t["dtype"]]
        current[renamed] = (torch.randn(t["shape"], generator=generator) * 0.02).to(dtype)
        size += current[renamed].nbytes
        if size > shard_bytes:
            flush()
            size = 0
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(out, vocab_size=16)
    return out


def _slice_name(name: str, trunk_layers: str, layers: dict[int, int]) -> str | None:
    """`name` in the slice (a trunk decoder layer's renumbered), or None for a trunk layer the slice leaves out."""
    if not name.startswith(trunk_layers):
        return name  # embeddings, final norm, lm_head, the MTP head's own layers, the vision tower's blocks
    index, tail = name[len(trunk_layers):].split(".", 1)
    return f"{trunk_layers}{layers[int(index)]}.{tail}" if int(index) in layers else None

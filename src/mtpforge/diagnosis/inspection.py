"""`mtpforge inspect`: what a checkpoint is, in one screen.

Family and architecture, layers by kind, parameters and bytes by group
(trunk / MTP / vision / embeddings), stored dtypes, the quantization scheme and
what it covers, the MTP head's status, the vision tower's, and the shards.
Reads headers only: no tensor data, no torch.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mtpforge.checkpoint import open_checkpoint
from mtpforge.errors import CheckpointError
from mtpforge.families import GROUPS, MTP, TRUNK, VISION, detect_family, expected_inventory
from mtpforge.families.base import LINEAR


@dataclass(frozen=True)
class InspectReport:
    """The summary of one checkpoint; `to_dict()` is the `--json` document."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.inspect/1", **self.data}


def inspect_checkpoint(path: str | os.PathLike[str]) -> InspectReport:
    """Summarise the checkpoint at `path`.

    Args:
        path: a checkpoint directory.

    Returns:
        The summary.

    Raises:
        CheckpointError: the checkpoint cannot be read (including a corrupt shard:
            run `mtpforge doctor` for the full diagnosis).
        UnsupportedFamilyError: the architecture is not one mtpforge knows.
    """
    ckpt = open_checkpoint(path)
    if ckpt.header_errors:
        first = next(iter(ckpt.header_errors.values()))
        raise CheckpointError(f"{len(ckpt.header_errors)} shard(s) cannot be read; first: {first}",
                              hint=f"run `mtpforge doctor {path}` for the full diagnosis")
    family = detect_family(ckpt.config)
    config = ckpt.config
    expected = expected_inventory(family, config, ckpt.tensors)
    stored = ckpt.stored

    groups = {g: {"tensors": 0, "parameters": 0, "bytes": 0} for g in GROUPS}
    linear_q = {g: [0, 0] for g in GROUPS}  # quantized, total linear weights
    for name, w in stored.items():
        spec = expected.get(name)
        group = spec.group if spec else family.group_of(name)
        row = groups[group]
        row["tensors"] += 1
        row["parameters"] += math.prod(w.shape) if w.shape is not None else 0
        row["bytes"] += w.nbytes
        if spec is not None and spec.kind == LINEAR:
            linear_q[group][1] += 1
            linear_q[group][0] += int(w.quantized)

    dtypes: Counter[str] = Counter()
    for t in ckpt.tensors.values():
        dtypes[t.dtype] += t.nbytes
    trunk_layers = {(s.layer, s.layer_kind) for s in expected.values() if s.group == TRUNK and s.layer is not None}
    layer_kinds = Counter(kind for _, kind in trunk_layers)

    mtp_stored = [n for n in stored if family.group_of(n) == MTP]
    mtp_expected = [n for n, s in expected.items() if s.group == MTP]
    unindexed_mtp = [n for n in ckpt.unindexed if family.group_of(n) == MTP and n not in ckpt.tensors]
    vision_stored = [n for n in stored if family.group_of(n) == VISION]

    data = {
        "path": str(path),
        "family": family.name,
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "layers": {"total": sum(layer_kinds.values()), **dict(sorted(layer_kinds.items()))},
        "groups": groups,
        "parameters": sum(g["parameters"] for g in groups.values()),
        "bytes": sum(g["bytes"] for g in groups.values()),
        "dtypes": dict(sorted(dtypes.items(), key=lambda kv: -kv[1])),
        "quantization": _quantization(ckpt, linear_q),
        "mtp": {
            "declared_layers": family.mtp_layers(config),
            "config_key": family.mtp_config_key,
            "present": bool(mtp_stored),
            "tensors": len(mtp_stored),
            "expected_tensors": len(mtp_expected),
            "unindexed_tensors": len(unindexed_mtp),
            "quantized": sum(1 for n in mtp_stored if stored[n].quantized),
            "bytes": groups[MTP]["bytes"],
        },
        "vision": {
            "declared": family.has_vision(config),
            "language_model_only": family.language_model_only(config),
            "tensors": len(vision_stored),
            "bytes": groups[VISION]["bytes"],
        },
        "shards": {
            "count": len(ckpt.headers),
            "indexed": ckpt.index is not None,
            "total_size": ckpt.index.total_size if ckpt.index else None,
            "file_bytes": sum(h.file_bytes for h in ckpt.headers.values()),
        },
    }
    return InspectReport(data)


def _quantization(ckpt: Any, linear_q: dict[str, list[int]]) -> dict[str, Any] | None:
    if not ckpt.quant_configs and not ckpt.foreign_quant_method and not ckpt.quant_errors:
        return None
    return {
        "configs": [
            {"method": qc.method, "source": qc.source, "schemes": [s.label for s in qc.schemes], "ignore": list(qc.ignore)}
            for qc in ckpt.quant_configs
        ],
        "unsupported_method": ckpt.foreign_quant_method,
        "invalid": [message for _, message in ckpt.quant_errors],
        "linear_quantized": {g: {"quantized": q, "total": t} for g, (q, t) in linear_q.items() if t},
    }

"""`mtpforge inspect`: what a checkpoint is, in one screen.

Family and architecture, layers by kind, parameters and bytes by group
(trunk / MTP / vision / embeddings), stored dtypes, the quantization scheme and
what it covers, the MTP head's status, the vision tower's, and the shards.
Reads headers only: no tensor data, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from mtpforge.checkpoint import Checkpoint, CheckpointLike, as_checkpoint
from mtpforge.checkpoint.checkpoint import gc_paused
from mtpforge.errors import CheckpointError
from mtpforge.families import GROUPS, MTP, TRUNK, VISION, detect_family, expected_inventory
from mtpforge.families.base import LINEAR


@dataclass
class GroupSize:
    """Tensors, parameters and stored bytes of one group (trunk, mtp, vision, embeddings)."""

    tensors: int = 0
    parameters: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class QuantConfigSummary:
    """One quantization config as declared (config.json or hf_quant_config.json)."""

    method: str
    source: str
    schemes: list[str]
    ignore: list[str]


@dataclass(frozen=True)
class QuantizationSummary:
    """What the checkpoint declares about quantization, and how many Linear weights each group stores quantized."""

    configs: list[QuantConfigSummary]
    unsupported_method: str | None
    invalid: list[str]
    linear_quantized: dict[str, dict[str, int]]  # group -> {"quantized": n, "total": n}

    @property
    def method(self) -> str | None:
        """The first declared method (`compressed-tensors`, `modelopt`, ...), if any."""
        return self.configs[0].method if self.configs else None


@dataclass(frozen=True)
class MtpStatus:
    """The MTP head: declared in the config, and what the shards hold of it."""

    declared_layers: int
    config_key: str | None
    present: bool
    tensors: int
    expected_tensors: int
    unindexed_tensors: int
    quantized: int
    bytes: int


@dataclass(frozen=True)
class VisionStatus:
    """The vision tower: declared in the config, and what the shards hold of it."""

    declared: bool
    language_model_only: bool
    tensors: int
    bytes: int


@dataclass(frozen=True)
class ShardStatus:
    """The shard files and their index."""

    count: int
    indexed: bool
    total_size: int | None
    file_bytes: int


@dataclass(frozen=True)
class InspectReport:
    """The summary of one checkpoint; `to_dict()` is the `--json` document (`mtpforge.inspect/1`)."""

    path: str
    family: str
    architecture: str | None
    model_type: str | None
    layers: dict[str, int]  # "total" and a count per layer kind
    groups: dict[str, GroupSize]
    parameters: int
    bytes: int
    dtypes: dict[str, int]  # stored dtype -> bytes, largest first
    quantization: QuantizationSummary | None
    mtp: MtpStatus
    vision: VisionStatus
    shards: ShardStatus

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.inspect/1", **asdict(self)}


def inspect_checkpoint(path: CheckpointLike) -> InspectReport:
    """Summarise the checkpoint at `path`.

    The cycle collector is paused meanwhile (checkpoint.gc_paused: a 400K-tensor index builds millions of objects).

    Args:
        path: a checkpoint directory, or an open `Checkpoint`.

    Returns:
        The summary.

    Raises:
        CheckpointError: the checkpoint cannot be read (including a corrupt shard:
            run `mtpforge doctor` for the full diagnosis).
        UnsupportedFamilyError: the architecture is not one mtpforge knows.
    """
    with gc_paused():
        return _inspect(path)


def _inspect(path: CheckpointLike) -> InspectReport:
    """The summary; the cycle collector is paused by the caller."""
    ckpt = as_checkpoint(path)
    if ckpt.header_errors:
        first = next(iter(ckpt.header_errors.values()))
        raise CheckpointError(f"{len(ckpt.header_errors)} shard(s) cannot be read; first: {first}",
                              hint=f"run `mtpforge doctor {ckpt.root}` for the full diagnosis")
    family = detect_family(ckpt.config)
    config = ckpt.config
    stored = ckpt.stored
    expected = expected_inventory(family, config, stored)  # weights' names: as doctor's Context.expected

    groups = {g: GroupSize() for g in GROUPS}
    linear_q = {g: [0, 0] for g in GROUPS}  # quantized, total linear weights
    members: dict[str, list[str]] = {g: [] for g in GROUPS}  # each weight's group, decided once
    for name, w in stored.items():
        spec = expected.get(name)
        group = spec.group if spec else family.group_of(name)
        members[group].append(name)
        row = groups[group]
        row.tensors += 1
        row.parameters += math.prod(w.shape) if w.shape is not None else 0
        row.bytes += w.nbytes
        if spec is not None and spec.kind == LINEAR:
            linear_q[group][1] += 1
            linear_q[group][0] += int(w.quantized)

    dtypes: dict[str, int] = {}
    for t in ckpt.tensors.values():
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.end - t.begin  # fields, not properties: 400K times
    trunk_layers = {(s.layer, s.layer_kind) for s in expected.values()
                    if s.group == TRUNK and s.layer is not None and s.layer_kind is not None}
    layer_kinds = Counter(kind for _, kind in trunk_layers)

    mtp_stored = members[MTP]
    mtp_expected = [n for n, s in expected.items() if s.group == MTP]
    unindexed_mtp = [n for n in ckpt.unindexed if family.group_of(n) == MTP and n not in ckpt.tensors]
    vision_stored = members[VISION]

    return InspectReport(
        path=str(path if not isinstance(path, Checkpoint) else ckpt.root),
        family=family.name,
        architecture=(config.get("architectures") or [None])[0],
        model_type=config.get("model_type"),
        layers={"total": sum(layer_kinds.values()), **dict(sorted(layer_kinds.items()))},
        groups=groups,
        parameters=sum(g.parameters for g in groups.values()),
        bytes=sum(g.bytes for g in groups.values()),
        dtypes=dict(sorted(dtypes.items(), key=lambda kv: -kv[1])),
        quantization=_quantization(ckpt, linear_q),
        mtp=MtpStatus(
            declared_layers=family.mtp_layers(config),
            config_key=family.mtp_config_key,
            present=bool(mtp_stored),
            tensors=len(mtp_stored),
            expected_tensors=len(mtp_expected),
            unindexed_tensors=len(unindexed_mtp),
            quantized=sum(1 for n in mtp_stored if stored[n].quantized),
            bytes=groups[MTP].bytes,
        ),
        vision=VisionStatus(
            declared=family.has_vision(config),
            language_model_only=family.language_model_only(config),
            tensors=len(vision_stored),
            bytes=groups[VISION].bytes,
        ),
        shards=ShardStatus(
            count=len(ckpt.headers),
            indexed=ckpt.index is not None,
            total_size=ckpt.index.total_size if ckpt.index else None,
            file_bytes=sum(h.file_bytes for h in ckpt.headers.values()),
        ),
    )


def _quantization(ckpt: Checkpoint, linear_q: dict[str, list[int]]) -> QuantizationSummary | None:
    if not ckpt.quant_configs and not ckpt.foreign_quant_method and not ckpt.quant_errors:
        return None
    return QuantizationSummary(
        configs=[QuantConfigSummary(qc.method, qc.source, [s.label for s in qc.schemes], list(qc.ignore))
                 for qc in ckpt.quant_configs],
        unsupported_method=ckpt.foreign_quant_method,
        invalid=[message for _, message in ckpt.quant_errors],
        linear_quantized={g: {"quantized": q, "total": t} for g, (q, t) in linear_q.items() if t},
    )

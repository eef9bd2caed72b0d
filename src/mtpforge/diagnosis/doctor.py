"""`mtpforge doctor`: every finding of the catalogue that the files can decide.

The checks read headers, configs and a few norm vectors; never the weights
themselves, so a 27B checkpoint is diagnosed in well under a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.checkpoint.checkpoint import gc_paused
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.files import check_files
from mtpforge.diagnosis.findings import CATALOGUE, ERROR, INFO, WARNING, Finding
from mtpforge.diagnosis.inventory import check_inventory
from mtpforge.diagnosis.norms import check_norms
from mtpforge.diagnosis.quantization import check_quantization
from mtpforge.families import detect_family

CHECKS = (check_files, check_inventory, check_quantization, check_norms)
_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}

__all__ = ["CATALOGUE", "DoctorReport", "Finding", "doctor"]


@dataclass(frozen=True)
class DoctorReport:
    """The findings for one checkpoint, most severe first."""

    path: str
    family: str
    findings: tuple[Finding, ...]

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return self.count(ERROR) == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "mtpforge.doctor/1",
            "path": self.path,
            "family": self.family,
            "ok": self.ok,
            "counts": {s: self.count(s) for s in (ERROR, WARNING, INFO)},
            "findings": [f.to_dict(self.path) for f in self.findings],
        }


def doctor(path: CheckpointLike) -> DoctorReport:
    """Diagnose the checkpoint at `path` against the finding catalogue.

    Args:
        path: a checkpoint directory, or an open `Checkpoint`.

    Returns:
        Every finding, errors first; a corrupt shard is a finding, not an exception.

    Raises:
        CheckpointError: there is no checkpoint to diagnose (no config.json, unsafe index paths).
        UnsupportedFamilyError: the architecture is not one mtpforge has rules for.
    """
    with gc_paused():
        ckpt = as_checkpoint(path)
        ctx = Context(ckpt, detect_family(ckpt.config))
        findings = _merged([_located(ctx, f) for check in CHECKS for f in check(ctx)])
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.code))
    return DoctorReport(os.fspath(path), ctx.family.name, tuple(findings))


def _located(ctx: Context, f: Finding) -> Finding:
    """`f` naming the files its tensors live in, when its check named none: every finding says where to look.

    A tensor that is not stored anywhere (missing) is implied by config.json, so that is its file.
    """
    if f.files or not f.tensors:
        return f
    files: set[str] = set()
    for name in f.tensors:
        weight = ctx.stored.get(name)
        info = ctx.ckpt.tensors.get(name) or ctx.ckpt.unindexed.get(name)
        if weight is not None:
            files.update(part.shard for part in weight.parts.values())
        elif info is not None:
            files.add(info.shard)
        else:
            files.add("config.json")
    return replace(f, files=tuple(sorted(files)))


def _merged(findings: list[Finding]) -> list[Finding]:
    """One finding per cause: the same code on the same tensors, found through several files (config.json's
    quantization_config and hf_quant_config.json declare one scheme twice), is one finding naming every file."""
    by_cause: dict[tuple[str, tuple[str, ...]], Finding] = {}
    out: list[Finding] = []
    for f in findings:
        key = (f.code, f.tensors)
        first = by_cause.get(key)
        if not f.tensors or first is None:
            by_cause.setdefault(key, f)
            out.append(f)
            continue
        extra = [name for name in f.files if name not in first.files]
        merged = replace(first, files=tuple(sorted({*first.files, *f.files})),
                         message=first.message + (f" (and the same in {', '.join(extra)})" if extra else ""))
        out[out.index(first)] = by_cause[key] = merged
    return out

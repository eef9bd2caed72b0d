"""What gets quantized: the seeds' scopes as presets, the user's patterns, the MTP policy, whole fused groups.

Only Linear weights engines run quantized are ever eligible: never conv1d,
A_log, dt_bias, norms, routers, GDN `in_proj_a` / `in_proj_b`, embeddings, the
vision tower, or MoE experts (stored per expert, fused by the engine). A
fused group (q/k/v, gate/up, in_proj_qkv/z) is quantized whole or not at all:
engines build one layer from it and one scheme must describe all its parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mtpforge.errors import UsageError
from mtpforge.families import MTP, TRUNK, TensorSpec
from mtpforge.families.base import ATTENTION_BLOCK, LINEAR, MLP_BLOCK, MTP_FC_BLOCK

# Preset -> (what it quantizes, which seed builds it).
SCOPES = {
    "all": "every eligible trunk Linear: full attention, GDN in_proj_qkv / in_proj_z / out_proj, MLP (seeds 001, 002, 004)",
    "attention-mlp": "full-attention q/k/v/o and MLP; Gated DeltaNet layers stay BF16 (seed 000)",
    "mlp-skip-first": "MLP only, layer 0 kept whole in BF16 (seed 003)",
}
MTP_POLICIES = ("keep", "quantize")


@dataclass(frozen=True)
class Selection:
    chosen: dict[str, TensorSpec]
    notes: list[str] = field(default_factory=list)


def eligible(spec: TensorSpec) -> bool:
    return spec.kind == LINEAR and spec.group in (TRUNK, MTP) and not (spec.keep_high_precision or spec.small_proj or spec.expert)


def _in_preset(spec: TensorSpec, preset: str) -> bool:
    if preset == "attention-mlp":
        return spec.block in (ATTENTION_BLOCK, MLP_BLOCK)
    if preset == "mlp-skip-first":
        return spec.block == MLP_BLOCK and not (spec.group == TRUNK and spec.layer == 0)
    return True


def select(expected: dict[str, TensorSpec], *, preset: str = "all", include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
           mtp: str = "keep") -> Selection:
    """The weights to quantize, by tensor name.

    Args:
        expected: the family's inventory of the checkpoint.
        preset: a key of SCOPES.
        include: regular expressions (full match on the module path) adding eligible Linear layers.
        exclude: regular expressions removing layers.
        mtp: `keep` the head as stored, or `quantize` its layer like the trunk (its fc stays BF16).

    Raises:
        UsageError: unknown preset or policy, a bad pattern, or a pattern that matches nothing.
    """
    if preset not in SCOPES:
        raise UsageError(f"unknown scope {preset!r}", hint=f"one of {', '.join(SCOPES)}")
    if mtp not in MTP_POLICIES:
        raise UsageError(f"unknown MTP policy {mtp!r}", hint="--mtp keep or --mtp quantize")
    includes, excludes = _compile(include, "--include"), _compile(exclude, "--exclude")
    linear = {n: s for n, s in expected.items() if s.kind == LINEAR}
    for flag, patterns in (("--include", includes), ("--exclude", excludes)):
        for p in patterns:
            if not any(p.fullmatch(s.module) for s in linear.values()):
                raise UsageError(f"{flag} {p.pattern!r} matches no Linear layer of this checkpoint",
                                 hint="patterns match module paths in full, e.g. 'model\\.language_model\\.layers\\.0\\..*'")
    chosen = {}
    for name, spec in expected.items():
        if not eligible(spec):
            continue
        # The head's fc mixes [embedding, hidden]: kept BF16 even when the head is quantized (seed 002: "load-bearing").
        if spec.group == MTP and (mtp == "keep" or spec.block == MTP_FC_BLOCK):
            continue
        picked = _in_preset(spec, preset) or any(p.fullmatch(spec.module) for p in includes)
        if picked and not any(p.fullmatch(spec.module) for p in excludes):
            chosen[name] = spec
    return _whole_fused_groups(expected, chosen)


def _whole_fused_groups(expected: dict[str, TensorSpec], chosen: dict[str, TensorSpec]) -> Selection:
    """Drop partly chosen fused groups: a fused layer cannot be half quantized."""
    members: dict[str, list[str]] = {}
    for name, spec in expected.items():
        if spec.fused and eligible(spec):
            members.setdefault(spec.fused, []).append(name)
    notes = []
    for fused, names in members.items():
        picked = [n for n in names if n in chosen]
        if picked and len(picked) < len(names):
            for n in picked:
                del chosen[n]
            notes.append(f"kept {fused} whole in high precision: only part of it was selected")
    return Selection(chosen, notes)


def _compile(patterns: tuple[str, ...], flag: str) -> list[re.Pattern[str]]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p.removeprefix("re:")))
        except re.error as e:
            raise UsageError(f"{flag} {p!r} is not a regular expression: {e}") from e
    return compiled

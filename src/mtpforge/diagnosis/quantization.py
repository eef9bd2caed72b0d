"""Checks of quantization: configs, companions, MTP coverage, fused groups and
the tensors that must stay high precision.

The question behind each check is how vLLM or SGLang will read the weights: a
module the config quantizes must be stored quantized with all companions; one
stored in BF16 must be covered by `ignore` / `exclude_modules`, under the name
the engine uses (fused names included).
"""

from __future__ import annotations

from collections import defaultdict

from mtpforge.checkpoint.header import FLOAT_DTYPES
from mtpforge.checkpoint.quant_config import (
    AUTOROUND_METHOD,
    AWQ_METHOD,
    CT_METHOD,
    FP8_METHOD,
    GPTQ_METHOD,
    MLX_METHOD,
    MODELOPT_METHOD,
    QUARK_METHOD,
    QuantConfig,
    QuantScheme,
)
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP, TensorSpec
from mtpforge.families.base import EXPERTS, LINEAR
from mtpforge.formats.stored import BROKEN, DECLARED_AS, StoredWeight


def check_quantization(ctx: Context) -> list[Finding]:
    """quant-config-invalid, companions, MTP coverage, fused groups, precision rules."""
    out = [finding("quant-config-invalid", message, files=[file]) for file, message in ctx.ckpt.quant_errors]
    if ctx.ckpt.foreign_quant_method:
        out.append(finding("quant-method-unsupported",
                           f"quant_method {ctx.ckpt.foreign_quant_method!r} is not analysed by mtpforge", files=["config.json"]))
        return out
    stored_quantized = [w for w in ctx.stored.values() if w.quantized]
    if stored_quantized and not ctx.quant_configs and not ctx.ckpt.quant_errors:
        out.append(finding("quant-config-invalid", f"{len(stored_quantized)} weights are stored quantized "
                           f"({stored_quantized[0].format}) but no quantization config describes them", files=["config.json"]))
    out += _companions(ctx)
    out += _precision(ctx)
    decisions: dict[object, _Decisions] = {}  # one walk of the ~100K modules per distinct config, not per file
    for qc in ctx.quant_configs:
        key = _rules_key(qc)
        if key not in decisions:
            decisions[key] = _decide(ctx, qc)
        out += _coverage(ctx, qc, decisions[key])
    out += _fused_groups(ctx)
    return out


def _companions(ctx: Context) -> list[Finding]:
    broken = []
    for name, w in ctx.stored.items():
        spec = ctx.expected.get(name)
        if w.missing or w.problems:
            detail = "; ".join(([f"missing {', '.join(w.missing)}"] if w.missing else []) + list(w.problems))
            broken.append((name, detail))
        elif spec is not None and spec.kind == LINEAR and not w.quantized and w.dtype not in FLOAT_DTYPES:
            broken.append((name, f"stored as {w.dtype} with no scale: not a weight any engine can read"))
    if not broken:
        return []
    lines = "; ".join(f"{n} ({d})" for n, d in sorted(broken)[:3])
    more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
    return [finding("mtp-quant-companions", f"{len(broken)} quantized weights are incomplete: {lines}{more}",
                    tensors=[n for n, _ in broken])]


def _precision(ctx: Context) -> list[Finding]:
    out = []
    forced = [n for n, s in ctx.expected.items() if s.keep_high_precision and _is_quantized(ctx.stored.get(n))]
    if forced:
        out.append(finding("high-precision-quantized", f"{len(forced)} tensors that must stay high precision are quantized: "
                           f"{', '.join(forced[:3])}", tensors=forced))
    small = [n for n, s in ctx.expected.items() if s.small_proj and _is_quantized(ctx.stored.get(n))]
    if small:
        out.append(finding("gdn-small-proj-quantized", f"{len(small)} GDN in_proj_a / in_proj_b projections are quantized: "
                           "no fast kernel fits their few outputs and GDN is precision-sensitive", tensors=small))
    mtp_q = [n for n, s in ctx.expected.items() if s.group == MTP and s.kind == LINEAR and _is_quantized(ctx.stored.get(n))]
    if mtp_q:
        fmt = ctx.stored[mtp_q[0]].format
        out.append(finding("mtp-quantized", f"{len(mtp_q)} MTP weights are quantized ({fmt}); drafts degrade, and loaders that "
                           "read the head as BF16 reach 0% acceptance", tensors=mtp_q))
    return out


def _rules_key(qc: QuantConfig) -> object:
    return qc.decision_key if qc.decision_key is not None else id(qc)


# MTP weights stored dense that the config quantizes; weights stored otherwise than declared: (tensor, stored as, said)
_Decisions = tuple[list[str], list[tuple[str, str, str]]]


def _decide(ctx: Context, qc: QuantConfig) -> _Decisions:
    """How `qc` declares each LINEAR module against how it is stored (the file's name left out, so that
    configs deciding alike share the walk)."""
    uncovered: list[str] = []
    mismatched: list[tuple[str, str, str]] = []
    for name, spec in ctx.expected.items():
        w = ctx.stored.get(name)
        if w is None or w.format == BROKEN or not (spec.kind == LINEAR or (spec.kind == EXPERTS and not w.quantized)):
            continue
        if not w.quantized and spec.keep_high_precision:
            continue  # routers: engines build them unquantized whatever the config says
        if qc.stored_decides and not qc.has_override(spec.module):
            continue  # MLX: a module config.json does not name is loaded as it is stored
        scheme = qc.scheme_for(spec.module) if spec.kind == LINEAR else _experts_scheme(qc, spec)
        if w.quantized and (scheme is None or scheme.format not in DECLARED_AS.get(w.format, ())):
            mismatched.append((name, w.format, "leaves it unquantized" if scheme is None else f"declares {scheme.format}"))
        elif not w.quantized and scheme is not None:
            if spec.group == MTP:
                uncovered.append(name)
            else:
                mismatched.append((name, w.dtype, f"quantizes it ({scheme.label})"))
    return uncovered, mismatched


def _coverage(ctx: Context, qc: QuantConfig, decisions: _Decisions) -> list[Finding]:
    """Does `qc` describe each LINEAR module as it is stored?"""
    uncovered = decisions[0]
    mismatched = [(name, f"{name} is stored {stored} but {qc.source} {said}") for name, stored, said in decisions[1]]
    source_file = _file_of(qc)
    out = []
    if uncovered:
        shards = sorted({ctx.ckpt.tensors[n].shard for n in uncovered if n in ctx.ckpt.tensors})
        out.append(finding("mtp-quant-uncovered", f"{len(uncovered)} MTP weights ({_where(uncovered, shards)}) are stored "
                           f"unquantized but {qc.source} would quantize them: the engine crashes or reads them as the wrong "
                           f"type; fix: {exclude_hint(qc.method, ctx.family.mtp_prefix)}",
                           tensors=uncovered, files=[source_file]))
    mtp_mismatched = [(n, why) for n, why in mismatched if ctx.expected[n].group == MTP]
    if mtp_mismatched:
        out.append(finding("quant-declared-mismatch", f"{len(mtp_mismatched)} MTP weights are not stored as {qc.source} "
                           f"says, so the engine builds the head for other tensors than it loads: "
                           f"{'; '.join(why for _, why in mtp_mismatched[:2])}; fix: re-quantize or graft the head as the "
                           "config declares it, or make the config declare the head as stored",
                           tensors=[n for n, _ in mtp_mismatched], files=[source_file]))
    trunk_mismatched = [(n, why) for n, why in mismatched if ctx.expected[n].group != MTP]
    if trunk_mismatched:
        out.append(finding("quant-declared-mismatch", f"{len(trunk_mismatched)} weights are not stored as {qc.source} says: "
                           f"{'; '.join(why for _, why in trunk_mismatched[:2])}",
                           tensors=[n for n, _ in trunk_mismatched], files=[source_file]))
    out += _fused_unsafe(ctx, qc)
    return out


def _experts_scheme(qc: QuantConfig, spec: TensorSpec) -> QuantScheme | None:
    """What the engine builds for fused 3-D experts: vLLM asks about expert 0's projections by their
    per-expert names (`compressed_tensors_moe.get_moe_method`), e.g. `mlp.experts.0.gate_proj`."""
    parent, proj = spec.module.rsplit(".", 1)
    members = ("gate_proj", "up_proj") if proj == "gate_up_proj" else (proj,)
    return next((s for m in members if (s := qc.scheme_for(f"{parent}.0.{m}")) is not None), None)


def exclude_hint(method: str, prefix: str) -> str:
    """How `method`'s config keeps the modules under `prefix` unquantized, in its own syntax."""
    return {
        CT_METHOD: f"add 're:^{prefix}.*' to quantization_config.ignore",
        MODELOPT_METHOD: f"add '{prefix}*' to exclude_modules (hf_quant_config.json and config.json ignore)",
        GPTQ_METHOD: f"add '-:^{prefix}\\.' first in quantization_config.dynamic",
        AWQ_METHOD: f"add '{prefix}.' to quantization_config.modules_to_not_convert",
        AUTOROUND_METHOD: f"add '{prefix}' with bits 16 to quantization_config.extra_config",
        QUARK_METHOD: f"add 're:^{prefix}.*' to quantization_config.exclude",
        FP8_METHOD: f"list every {prefix} module by its exact name in quantization_config.ignored_layers",
        MLX_METHOD: "store the head's scales and biases, or name each head module false in config.json quantization",
    }.get(method, "exclude the head from quantization in the config")


def _where(tensors: list[str], shards: list[str]) -> str:
    head = ", ".join(tensors[:2]) + (f" and {len(tensors) - 2} more" if len(tensors) > 2 else "")
    return f"{head}, in {', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''}" if shards else head


def _file_of(qc: QuantConfig) -> str:
    return qc.source.split(" ")[0]  # "config.json quantization_config" -> "config.json"


def _fused_unsafe(ctx: Context, qc: QuantConfig) -> list[Finding]:
    """MTP members ignored one by one, while the fused module's own name is not (F3)."""
    groups = _fused_members(ctx, group=MTP)
    unsafe = []
    for fused, members in groups.items():
        dense = all(not _is_quantized(ctx.stored.get(m.name)) for m in members)
        each_ignored = all(qc.ignores(m.module) for m in members)
        if dense and each_ignored and qc.scheme_for(fused) is not None:
            unsafe += [m.name for m in members]
    if not unsafe:
        return []
    return [finding("mtp-ignore-fused-unsafe", f"{qc.source} ignores the MTP projections one by one, but not the fused modules "
                    "(qkv_proj, gate_up_proj) SGLang builds: they load quantized and skip the BF16 weights (accept length 1.0)",
                    tensors=unsafe, files=[_file_of(qc)])]


def _fused_groups(ctx: Context) -> list[Finding]:
    """Members of one fused module stored, or declared, in different schemes (vLLM refuses to load)."""
    mixed = []
    keys = [_rules_key(qc) for qc in ctx.quant_configs]
    distinct = [qc for i, qc in enumerate(ctx.quant_configs) if keys[i] not in keys[:i]]  # a repeated config once
    for fused, members in _fused_members(ctx, group=None).items():
        weights = [ctx.stored.get(m.name) for m in members]
        if any(w is None for w in weights):
            continue
        stored = {_scheme_key(w) for w in weights if w is not None}
        declared_mixed = any(len({qc.scheme_for(m.module) for m in members}) > 1 for qc in distinct)
        if len(stored) > 1 or declared_mixed:
            mixed.append(fused)
    if not mixed:
        return []
    return [finding("fused-group-mixed", f"{len(mixed)} fused modules mix quantization schemes across their members "
                    f"(vLLM refuses to load): {', '.join(mixed[:3])}", tensors=mixed)]


def _fused_members(ctx: Context, *, group: str | None) -> dict[str, list[TensorSpec]]:
    groups: dict[str, list[TensorSpec]] = defaultdict(list)
    for spec in ctx.expected.values():
        if spec.fused and spec.kind == LINEAR and (group is None or spec.group == group):
            groups[spec.fused].append(spec)
    return groups


def _scheme_key(w: StoredWeight) -> tuple[str, int | None]:
    return (w.format, w.bits) if w.quantized else ("dense", None)


def _is_quantized(w: StoredWeight | None) -> bool:
    return w is not None and (w.quantized or (not w.quantized and w.dtype not in FLOAT_DTYPES))

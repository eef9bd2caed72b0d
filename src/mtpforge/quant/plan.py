"""Planning a quantization: the request checked, the weights chosen, the output described (`QuantPlan`).

Pure: headers only, nothing written, no torch. The weights to quantize come
from `scope.py` (the seeds' presets, the user's patterns, whole fused groups);
what each becomes on disk and the config that declares it come from the
scheme (`formats.schemes`); the files from the one rebuild every writing verb
shares (`surgery.rebuild`), with each chosen weight replaced by its quantized
tensors (`rtn.py`), computed only when the plan is applied. The MTP head is
kept as stored and excluded with `re:^mtp.*`, or quantized like the trunk
with `mtp="quantize"`; it is carried either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mtpforge.checkpoint import Checkpoint, CheckpointLike, as_checkpoint
from mtpforge.checkpoint.header import FLOAT_DTYPES
from mtpforge.errors import UsageError
from mtpforge.families import MTP, TRUNK, VISION, Family, TensorSpec, detect_family, expected_inventory
from mtpforge.families.base import LINEAR
from mtpforge.formats.schemes import (
    CHECKPOINT_FORMATS,
    COMPRESSED_TENSORS,
    FP4,
    GPTQ_FORMAT,
    MODELOPT,
    QUANTIZE_SCHEMES,
    SCHEMES,
    Scheme,
    modelopt_pattern,
)
from mtpforge.quant.calibrated import check_head_request, check_method
from mtpforge.quant.observers import observed_int_tensors
from mtpforge.quant.rtn import fused_amax, quantized_copies
from mtpforge.quant.scope import SCOPES, select
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.rebuild import rebuild, require_readable
from mtpforge.surgery.writeplan import WritePlan


@dataclass(frozen=True)
class QuantPlan:
    """A checked quantization request and the output it writes."""

    ckpt: Checkpoint
    family: Family
    scheme: Scheme  # as the chosen checkpoint format stores it
    method: str
    text_only: bool
    chosen: dict[str, TensorSpec]  # the weights quantized, by tensor name
    weights: dict[str, Any]  # compressed-tensors' `weights` arguments (what llm-compressor is given)
    ignore: list[str]  # modules left unquantized, in compressed-tensors' syntax
    write: WritePlan
    # module -> largest |input|: filled by calibration, read by the write
    input_amax: dict[str, float] = field(default_factory=dict)
    mtp_method: str = "rtn"  # how a quantized head is quantized: rtn, or gptq on its captured inputs (`quant.head`)

    @property
    def head_pass(self) -> bool:
        """The head is quantized in a second pass, after the trunk (`quant.head`): a calibrated trunk or a calibrated head."""
        return any(s.group == MTP for s in self.chosen.values()) and (self.method != "rtn" or self.mtp_method != "rtn")

    @property
    def calibrated_modules(self) -> set[str]:
        """The modules whose input ranges are measured before the write (FP4 activations)."""
        return {s.module for s in self.chosen.values()} if self.scheme.activations else set()


def plan_quantize(base: CheckpointLike, *, scheme: str = "w4a16", group_size: int | None = None, scope: str = "all",
                  include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep", text_only: bool = False,
                  method: str = "rtn", actorder: bool = False, checkpoint_format: str = COMPRESSED_TENSORS,
                  mtp_method: str = "rtn", observer: str = "minmax") -> WritePlan:
    """Describe the quantization of `base` (pure: headers only, nothing written). Arguments as for `quantize`."""
    return quant_plan(base, scheme=scheme, group_size=group_size, scope=scope, include=include, exclude=exclude, mtp=mtp,
                      text_only=text_only, method=method, actorder=actorder, checkpoint_format=checkpoint_format,
                      mtp_method=mtp_method, observer=observer).write


def quant_plan(base: CheckpointLike, *, scheme: str = "w4a16", group_size: int | None = None, scope: str = "all",
               include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep", text_only: bool = False,
               method: str = "rtn", actorder: bool = False, checkpoint_format: str = COMPRESSED_TENSORS, mtp_method: str = "rtn",
               observer: str = "minmax") -> QuantPlan:
    """The `QuantPlan` of `quantize` (its arguments); raises UsageError for a request that cannot work."""
    requested, target, group = _check_request(scheme, group_size, checkpoint_format, mtp, method, actorder)
    check_head_request(requested, mtp, mtp_method, observer)
    weights = {**target.weights_config(group, actorder=actorder), "observer": observer}
    ckpt = as_checkpoint(base)
    require_readable(ckpt)
    if ckpt.quant_configs or ckpt.foreign_quant_method:
        raise UsageError(f"{ckpt.root} is already quantized", hint="quantize the BF16 base")
    family = detect_family(ckpt.config)
    expected = expected_inventory(family, ckpt.config, ckpt.tensors)
    selection = select(expected, preset=scope, include=include, exclude=exclude, mtp=mtp)
    chosen = {n: s for n, s in selection.chosen.items() if n in ckpt.tensors and ckpt.tensors[n].dtype in FLOAT_DTYPES}
    if mtp == "quantize" and not any(s.group == MTP for s in chosen.values()):
        raise UsageError(f"--mtp quantize: {ckpt.root} has no MTP head to quantize",
                         hint="graft one first: mtpforge graft BASE --donor ...")
    if group:
        bad = sorted(n for n, s in chosen.items() if s.shape[1] % group)
        if bad:
            raise UsageError(f"group size {group} does not divide the inputs of {bad[0]} {list(expected[bad[0]].shape)}",
                             hint="choose a group size that divides every quantized layer's input dimension")
    dropped = {n for n in ckpt.tensors if family.group_of(n) == VISION} if text_only else set()
    input_amax: dict[str, float] = {}
    amax = fused_amax(ckpt, chosen, target)
    # Another observer than min-max: its grid, rounded to nearest (INT only, `check_head_request`).
    compute = partial(observed_int_tensors, weights=weights) if observer != "minmax" else None
    replace = {n: partial(quantized_copies, ckpt, scheme=target, group=group, amax=amax.get(n), input_amax=input_amax,
                          compute=compute) for n in chosen}
    rb = rebuild(ckpt, drop=dropped, replace=replace)
    ignore = _ignore(family, expected, chosen, mtp)
    entries = [modelopt_pattern(p) for p in ignore] if target.checkpoint_format == MODELOPT else ignore
    qc, hf_quant = target.quantization_config(entries, group=group, actorder=actorder)
    if target.checkpoint_format == COMPRESSED_TENSORS:
        qc["config_groups"]["group_0"]["weights"]["observer"] = observer
    config = {**ckpt.config, "quantization_config": qc}
    if text_only:
        config["language_model_only"] = True
    actions = _actions(requested, group, method, actorder, scope, mtp, len(chosen), selection.notes, mtp_method, observer)
    if text_only:
        actions.append(f"drop {len(dropped)} vision tensors and declare language_model_only: true")
    warnings = [] if method == "rtn" else ["llm-compressor writes the shards: their layout differs from the list below"]
    if target.activations:
        actions.append("calibrate FP4 activation scales: the largest |input| of each quantized layer on calibration text")
    write = make_plan("quantize", ckpt.root, rb, config, hf_quant, actions, warnings)
    return QuantPlan(ckpt, family, target, method, text_only, chosen, weights, ignore, write, input_amax, mtp_method)


def _check_request(scheme: str, group_size: int | None, checkpoint_format: str, mtp: str, method: str,
                   actorder: bool) -> tuple[Scheme, Scheme, int | None]:
    """The scheme asked for, the same as the checkpoint format stores it, and the group size; or UsageError."""
    if checkpoint_format == GPTQ_FORMAT:  # calibrated and written as compressed-tensors, then repacked (quant.gptq_output)
        from mtpforge.quant.gptq_output import check_gptq_request

        check_gptq_request(scheme)
        checkpoint_format = COMPRESSED_TENSORS
    requested = SCHEMES[scheme] if scheme in QUANTIZE_SCHEMES else None
    target = requested.in_format(checkpoint_format) if requested is not None else None
    if checkpoint_format not in CHECKPOINT_FORMATS or (target is None and (requested or checkpoint_format != COMPRESSED_TENSORS)):
        raise UsageError(f"--format {checkpoint_format} is not written for {scheme}",
                         hint="modelopt holds NVFP4 with FP4 activations only: --scheme nvfp4 --format modelopt")
    check_method(method, mtp)
    if method == "rtn" and actorder:
        raise UsageError("--actorder orders GPTQ's columns; RTN has no order", hint="--method gptq --actorder")
    if requested is not None and requested.activations and mtp == "quantize":
        raise UsageError("--mtp quantize with FP4 activations: the head's input ranges cannot be calibrated "
                         "(transformers builds no MTP module)", hint="--mtp keep, or --scheme nvfp4a16")
    if requested is not None and requested.kind == FP4 and method != "rtn":
        raise UsageError(f"{scheme} is written data-free here; --method {method} runs INT schemes", hint="--method rtn")
    if requested is None or target is None:
        raise UsageError(f"unknown scheme {scheme!r}", hint=f"one of {', '.join(QUANTIZE_SCHEMES)}")
    group = (group_size if group_size is not None else requested.default_group) or None  # 0: one scale per output channel
    if requested.kind == FP4 and group != requested.default_group:
        raise UsageError(f"NVFP4 uses groups of {requested.default_group}, not {group}",
                         hint="leave --group-size out for nvfp4a16")
    return requested, target, group


def _ignore(family: Family, expected: dict[str, TensorSpec], chosen: dict[str, TensorSpec], mtp: str) -> list[str]:
    """What the config leaves unquantized: patterns for the head and the tower (they match the fused names engines build),
    exact names for the rest."""
    kept_groups = (TRUNK, MTP) if mtp == "quantize" else (TRUNK,)
    skipped = sorted({s.module for n, s in expected.items() if s.kind == LINEAR and n not in chosen and s.group in kept_groups})
    return ["lm_head", *skipped, f"re:^{family.vision_prefix}\\..*"] + ([mtp_ignore(family)] if mtp == "keep" else [])


def mtp_ignore(family: Family) -> str:
    """The ignore entry that keeps the whole MTP head unquantized (fused modules included)."""
    return f"re:^{family.mtp_prefix}.*"


def _actions(scheme: Scheme, group: int | None, method: str, actorder: bool, scope: str, mtp: str, count: int,
             notes: list[str], mtp_method: str, observer: str) -> list[str]:
    grouping = f"NVFP4 groups of {group}" if scheme.kind == FP4 else ("group " + str(group) if group else "per channel")
    calibrated = ", GPTQ on the inputs the quantized trunk gives it" if mtp_method == "gptq" else ""
    head = f"quantize the MTP layer like the trunk (its fc stays BF16){calibrated}" if mtp == "quantize" else \
        "keep the MTP head as stored, excluded with re:^mtp.*"
    order = ", activation order" if actorder else ""
    how = "RTN" if method == "rtn" else f"{method.upper()} via llm-compressor on calibration text" + order
    how += f", {observer} observer"
    return [f"quantize {count} Linear weights to {scheme.name} ({grouping}, {how}), scope {scope}: {SCOPES[scope]}", head,
            "keep conv1d, A_log, dt_bias, norms, in_proj_a/b, embeddings and lm_head high precision", *notes]

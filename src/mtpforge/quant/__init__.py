"""`mtpforge quantize`: hybrid-aware quantization that never loses the MTP head.

Data-free round-to-nearest, streamed tensor by tensor (memory bounded by the
largest tensor): INT4 / INT8 (symmetric or with a zero point, any group size
or per channel) as compressed-tensors `pack-quantized`, and NVFP4 weights
(NVFP4A16) as `nvfp4-pack-quantized`, with compressed-tensors computing the
FP4 bytes. What is quantized comes from `scope.py` (the seeds' presets, the
user's patterns, whole fused groups). The MTP head is kept as stored and
excluded with `re:^mtp.*`, or quantized like the trunk with `mtp="quantize"`;
it is carried either way. `text_only` drops the vision tower in the same pass.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import Checkpoint, open_checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS, FLOAT_DTYPES
from mtpforge.errors import UsageError
from mtpforge.families import VISION, Family, TensorSpec, detect_family, expected_inventory
from mtpforge.families.base import LINEAR
from mtpforge.quant.calibrated import check_method
from mtpforge.quant.scope import SCOPES, select
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.writeplan import NewShard, WritePlan, TensorCopy
from mtpforge.surgery.rebuild import REWRITTEN_FILES, Rebuild, require_readable
from mtpforge.surgery.sources import Computed, FileRange
from mtpforge.surgery.stage import apply_plan, check_destination

# Scheme -> (kind, bits, symmetric)
SCHEMES = {"w4a16": ("int", 4, True), "w4a16-asym": ("int", 4, False), "w8a16": ("int", 8, True), "w8a16-asym": ("int", 8, False),
           "nvfp4a16": ("fp4", 4, True), "nvfp4": ("fp4", 4, True)}
QUANTIZED_ACTIVATIONS = {"nvfp4"}  # FP4 activations: input scales calibrated on text
LAYOUTS = ("compressed-tensors", "modelopt")
DEFAULT_GROUP = {"w4a16": 128, "w4a16-asym": 128, "w8a16": 128, "w8a16-asym": 128, "nvfp4a16": 16, "nvfp4": 16}  # compressed-tensors 0.19 presets; --group-size 0: per channel


def plan_quantize(base: str | os.PathLike[str], *, scheme: str = "w4a16", group_size: int | None = None, scope: str = "all",
                  include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep", text_only: bool = False,
                  method: str = "rtn", actorder: bool = False, layout: str = "compressed-tensors",
                  input_amax: dict[str, float] | None = None) -> WritePlan:
    """Describe the quantization of `base` (pure: headers only, nothing written). Arguments as for `quantize`;
    `input_amax` is read only when the plan is applied (filled by calibration for FP4 activations)."""
    if layout not in LAYOUTS or (layout == "modelopt" and scheme != "nvfp4"):
        raise UsageError(f"--format {layout} is not written for {scheme}",
                         hint="modelopt holds NVFP4 with FP4 activations only: --scheme nvfp4 --format modelopt")
    check_method(method, mtp)
    if method == "rtn" and actorder:
        raise UsageError("--actorder orders GPTQ's columns; RTN has no order", hint="--method gptq --actorder")
    if scheme in QUANTIZED_ACTIVATIONS and mtp == "quantize":
        raise UsageError("--mtp quantize with FP4 activations: the head's input ranges cannot be calibrated (transformers builds no MTP module)",
                         hint="--mtp keep, or --scheme nvfp4a16")
    if kind_of(scheme) == "fp4" and method != "rtn":
        raise UsageError(f"{scheme} is written data-free here; --method {method} runs INT schemes", hint="--method rtn")
    if scheme not in SCHEMES:
        raise UsageError(f"unknown scheme {scheme!r}", hint=f"one of {', '.join(SCHEMES)}")
    kind, bits, symmetric = SCHEMES[scheme]
    group = (group_size if group_size is not None else DEFAULT_GROUP[scheme]) or None  # 0: one scale per output channel
    if kind == "fp4" and group != 16:
        raise UsageError(f"NVFP4 uses groups of 16, not {group}", hint="leave --group-size out for nvfp4a16")
    ckpt = open_checkpoint(base)
    require_readable(ckpt)
    if ckpt.quant_configs or ckpt.foreign_quant_method:
        raise UsageError(f"{base} is already quantized", hint="quantize the BF16 base")
    family = detect_family(ckpt.config)
    expected = expected_inventory(family, ckpt.config, ckpt.tensors)
    selection = select(expected, preset=scope, include=include, exclude=exclude, mtp=mtp)
    chosen = {n: s for n, s in selection.chosen.items() if n in ckpt.tensors and ckpt.tensors[n].dtype in FLOAT_DTYPES}
    if mtp == "quantize" and not any(s.group == "mtp" for s in chosen.values()):
        raise UsageError(f"--mtp quantize: {base} has no MTP head to quantize", hint="graft one first: mtpforge graft BASE --donor ...")
    if group:
        bad = sorted(n for n, s in chosen.items() if s.shape[1] % group)
        if bad:
            raise UsageError(f"group size {group} does not divide the inputs of {bad[0]} {list(expected[bad[0]].shape)}",
                             hint="choose a group size that divides every quantized layer's input dimension")
    dropped = {n for n in ckpt.tensors if family.group_of(n) == VISION} if text_only else set()
    amax = _fused_amax(ckpt, expected, chosen) if kind == "fp4" else {}
    acts = input_amax if scheme in QUANTIZED_ACTIVATIONS else None
    rb = _rebuild(ckpt, chosen, dropped, lambda info: _quantized(ckpt, info, kind, bits, group, symmetric, amax, layout, acts))
    qc = _ct_config(family, expected, chosen, kind, bits, group, symmetric, mtp, method, actorder, acts is not None)
    hf_quant = None
    if layout == "modelopt":
        from mtpforge.formats.nvfp4 import modelopt_configs

        qc, hf_quant = modelopt_configs([_modelopt_pattern(p) for p in qc["ignore"]])
    config = {**ckpt.config, "quantization_config": qc}
    if text_only:
        config["language_model_only"] = True
    layout = "NVFP4 groups of 16" if kind == "fp4" else ("group " + str(group) if group else "per channel")
    head = "quantize the MTP layer like the trunk (its fc stays BF16)" if mtp == "quantize" else \
        "keep the MTP head as stored, excluded with re:^mtp.*"
    how = "RTN" if method == "rtn" else f"{method.upper()} via llm-compressor on calibration text" + (", activation order" if actorder else "")
    actions = [f"quantize {len(chosen)} Linear weights to {scheme} ({layout}, {how}), scope {scope}: {SCOPES[scope]}", head,
               "keep conv1d, A_log, dt_bias, norms, in_proj_a/b, embeddings and lm_head high precision", *selection.notes]
    if text_only:
        actions.append(f"drop {len(dropped)} vision tensors and declare language_model_only: true")
    warnings = [] if method == "rtn" else ["llm-compressor writes the shards: their layout differs from the list below"]
    if acts is not None:
        actions.append("calibrate FP4 activation scales: the largest |input| of each quantized layer on calibration text")
    return make_plan("quantize", ckpt.root, rb, config, hf_quant, actions, warnings)


def _modelopt_pattern(ignore: str) -> str:
    """compressed-tensors `re:^prefix...` patterns as modelopt's wildcards (`prefix*`); exact names stay."""
    if not ignore.startswith("re:"):
        return ignore
    return ignore[len("re:"):].lstrip("^").replace("\\.", ".").replace(".*", "*")


def kind_of(scheme: str) -> str:
    return SCHEMES[scheme][0] if scheme in SCHEMES else ""


def quantize(base: str, out: str, *, scheme: str = "w4a16", group_size: int | None = None, scope: str = "all",
             include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep", text_only: bool = False,
             method: str = "rtn", actorder: bool = False, calibration: str | None = None, samples: int = 64,
             layout: str = "compressed-tensors", overwrite: bool = False, dry_run: bool = False) -> WritePlan:
    """Quantize `base` into `out`, carrying the MTP head.

    Args:
        base: the BF16 checkpoint.
        out: the output directory (must not exist unless `overwrite`).
        scheme: a key of SCHEMES.
        group_size: inputs per scale; 0 for one per output channel (default: 128 for INT, 16 for NVFP4).
        scope: a preset of `quant.scope.SCOPES`.
        include, exclude: regular expressions on module paths that widen or narrow the scope.
        mtp: `keep` the head as stored, or `quantize` it in the same scheme.
        text_only: drop the vision tower and declare `language_model_only`.
        method: `rtn` (data-free, streamed), or `awq` / `gptq` (llm-compressor, calibrated, whole model in memory).
        actorder: GPTQ with activation order (`desc_act`).
        calibration: a text file for awq / gptq (JSON list or one text per line); default: the bundled prompts.
        samples: calibration texts used at most.
        layout: `compressed-tensors`, or `modelopt` (NVFP4 with FP4 activations, with `hf_quant_config.json`).
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.
    """
    check_destination(Path(base), Path(out), overwrite=overwrite)
    input_amax: dict[str, float] = {}
    plan = plan_quantize(base, scheme=scheme, group_size=group_size, scope=scope, include=include, exclude=exclude, mtp=mtp,
                         text_only=text_only, method=method, actorder=actorder, layout=layout, input_amax=input_amax)
    if dry_run:
        return plan
    if scheme in QUANTIZED_ACTIVATIONS:  # the one calibrated part of NVFP4: activation ranges, filled in before the write
        from mtpforge.quant.activations import input_amax as measure
        from mtpforge.quant.calibrated import calibration_texts

        modules = {t.name.rsplit(".", 1)[0] for shard in plan.written for t in shard.tensors
                   if t.name.endswith(("weight_global_scale", "weight_scale_2"))}
        input_amax.update(measure(Path(base), modules, calibration_texts(calibration), max_samples=samples))
    if method == "rtn":
        apply_plan(plan, Path(out), overwrite=overwrite)
    else:
        _calibrate(Path(base), Path(out), plan, method=method, text_only=text_only, calibration=calibration, samples=samples,
                   overwrite=overwrite)
    return plan


def _calibrate(base: Path, out: Path, plan: WritePlan, *, method: str, text_only: bool, calibration: str | None, samples: int,
               overwrite: bool) -> None:
    """llm-compressor into a staging directory beside `out`; declare the head; strip if asked; one rename (or strip's publish)."""
    from mtpforge.quant.calibrated import calibration_texts, finish, in_temporary, quantize_calibrated, remove
    from mtpforge.surgery.strip import strip

    family = detect_family(open_checkpoint(base).config)
    qc = plan.json_files["config.json"]["quantization_config"]
    staging = in_temporary(out.resolve())
    try:
        quantize_calibrated(base.resolve(), staging, method=method, weights=qc["config_groups"]["group_0"]["weights"], ignore=qc["ignore"],
                            texts=calibration_texts(calibration), max_samples=samples)
        finish(staging, f"re:^{family.mtp_prefix}.*")
        if text_only:
            strip(str(staging), str(out), overwrite=overwrite)
        else:
            if out.exists() and overwrite:
                shutil.rmtree(out)
            os.rename(staging, out)
    finally:
        remove(staging)


def _rebuild(ckpt: Checkpoint, chosen: dict[str, TensorSpec], dropped: set[str], quantized: Any) -> Rebuild:
    """Link shards with nothing to change; rewrite the others with quantized weights streamed in and dropped tensors left out."""
    linked, written, weight_map, sizes, linked_bytes = [], [], {}, {}, 0
    for shard, header in sorted(ckpt.headers.items()):
        names = [t.name for t in sorted(header.tensors.values(), key=lambda t: t.begin)]
        if not any(n in chosen or n in dropped for n in names):
            linked.append(shard)
            linked_bytes += header.file_bytes
            sizes.update({n: header.tensors[n].nbytes for n in names})
            weight_map.update({n: shard for n in names})
            continue
        copies: list[TensorCopy] = []
        for n in names:
            info = header.tensors[n]
            if n in dropped:
                continue
            copies += quantized(info) if n in chosen else [TensorCopy(n, info.dtype, info.shape, FileRange(ckpt.root / shard, info.begin, info.end))]
        if copies:
            written.append(NewShard(shard, tuple(copies)))
        weight_map.update({c.name: shard for c in copies})
        sizes.update({c.name: c.nbytes for c in copies})
    other = tuple(f for f in sorted(ckpt.files) if not f.endswith(".safetensors") and f not in REWRITTEN_FILES)
    return Rebuild(tuple(linked) + other, tuple(written), weight_map, sizes, linked_bytes, ())


def _fused_amax(ckpt: Checkpoint, expected: dict[str, TensorSpec], chosen: dict[str, TensorSpec]) -> dict[str, Any]:
    """Per weight, a function giving the largest magnitude over its fused group (read once, when first needed)."""
    groups: dict[str, list[str]] = {}
    for n, s in chosen.items():
        groups.setdefault(s.fused or n, []).append(n)
    memo: dict[str, float] = {}

    def amax_of(key: str) -> float:
        if key not in memo:
            from mtpforge.checkpoint.tensors import read_tensor

            memo[key] = max(float(read_tensor(ckpt, ckpt.tensors[n]).float().abs().max()) for n in groups[key])
        return memo[key]

    return {n: (lambda key=(s.fused or n): amax_of(key)) for n, s in chosen.items()}


def _quantized(ckpt: Checkpoint, info: Any, kind: str, bits: int, group: int | None, symmetric: bool,
               amax: dict[str, Any], layout: str, input_amax: dict[str, float] | None) -> list[TensorCopy]:
    """The companions standing for one weight; computed when the writer reaches them."""
    out, inp = info.shape
    module = info.name.rsplit(".", 1)[0]
    memo: dict[str, Any] = {}

    def part(key: str) -> bytes:
        import torch  # only when the plan is applied: planning stays torch-free

        from mtpforge.checkpoint.tensors import read_tensor

        if not memo:  # quantize once, when the writer reaches the first companion
            w = read_tensor(ckpt, info)
            if kind == "fp4":
                from mtpforge.formats.nvfp4 import stored_tensors

                acts = None if input_amax is None else input_amax[module]
                memo.update(stored_tensors(w, amax[info.name](), acts, layout=layout))
            else:
                from mtpforge.formats.int_affine import quantize_int

                memo.update(quantize_int(w, bits=bits, group_size=group, symmetric=symmetric))
        return memo.pop(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes()

    if kind == "fp4":
        from mtpforge.formats.nvfp4 import stored_shapes

        shapes = stored_shapes(out, inp, layout=layout, activations=input_amax is not None)
    else:
        groups = inp // group if group else 1
        shapes = {"weight_packed": ("I32", (out, inp * bits // 32)), "weight_scale": ("BF16", (out, groups)), "weight_shape": ("I64", (2,))}
        if not symmetric:
            shapes["weight_zero_point"] = ("I32", (-(-out * bits // 32), groups))
    copies = []
    for key, (dtype, shape) in shapes.items():
        nbytes = DTYPE_BITS[dtype] // 8 * math.prod(shape)
        copies.append(TensorCopy(f"{module}.{key}", dtype, shape, Computed(f"{module}.{key}", lambda k=key: part(k), nbytes)))
    return copies


def _ct_config(family: Family, expected: dict[str, TensorSpec], chosen: dict[str, TensorSpec], kind: str, bits: int, group: int | None,
               symmetric: bool, mtp: str, method: str = "rtn", actorder: bool = False, activations: bool = False) -> dict[str, Any]:
    kept_groups = ("trunk", "mtp") if mtp == "quantize" else ("trunk",)
    skipped = sorted({s.module for n, s in expected.items() if s.kind == LINEAR and n not in chosen and s.group in kept_groups})
    # Patterns for the head and the tower match the fused names engines build; exact names for the rest.
    ignore = ["lm_head", *skipped, f"re:^{family.vision_prefix}\\..*"] + ([f"re:^{family.mtp_prefix}.*"] if mtp == "keep" else [])
    if kind == "fp4":
        from mtpforge.formats.nvfp4 import ct_config, weights_config

        (weights, acts), fmt = ct_config(weights_config(), activations), "nvfp4-pack-quantized"
    else:
        weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group" if group else "channel",
                   "group_size": group, "dynamic": False, "actorder": "static" if actorder else None, "observer": "minmax",
                   "observer_kwargs": {}}
        acts, fmt = None, "pack-quantized"
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                          "output_activations": None, "format": fmt}},
            "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {}, "version": "0.19.0"}


__all__ = ["SCHEMES", "SCOPES", "plan_quantize", "quantize"]

"""`quantize`: plan, calibrate what needs text, write, publish (hybrid-aware; the MTP head is never lost).

RTN is data-free and streamed tensor by tensor (memory bounded by the largest
tensor): INT4 / INT8 as compressed-tensors `pack-quantized`, NVFP4 as
`nvfp4-pack-quantized` or modelopt's layout. NVFP4 with FP4 activations
measures input ranges on calibration text first (`activations.py`). AWQ and
GPTQ run llm-compressor on the whole model (`calibrated.py`). Every output is
published by `surgery.stage.apply_plan`: staged beside the destination under
the output's lock, validated, and made to appear in one atomic step (see
docs/surgery.md#safety).
"""

from __future__ import annotations

import os
from pathlib import Path

from mtpforge.checkpoint import CheckpointLike
from mtpforge.formats.schemes import COMPRESSED_TENSORS
from mtpforge.quant.plan import QuantPlan, mtp_ignore, quant_plan
from mtpforge.surgery.stage import apply_plan, check_destination
from mtpforge.surgery.writeplan import WritePlan


def quantize(base: CheckpointLike, out: str | os.PathLike[str], *, scheme: str = "w4a16", group_size: int | None = None,
             scope: str = "all", include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep",
             text_only: bool = False, method: str = "rtn", actorder: bool = False, calibration: str | None = None,
             samples: int = 64, checkpoint_format: str = COMPRESSED_TENSORS, overwrite: bool = False,
             dry_run: bool = False) -> WritePlan:
    """Quantize `base` into `out`, carrying the MTP head.

    Args:
        base: the BF16 checkpoint: a path, or an open `Checkpoint`.
        out: the output directory (must not exist unless `overwrite`).
        scheme: a name of `formats.schemes.QUANTIZE_SCHEMES`.
        group_size: inputs per scale; 0 for one per output channel (default: the scheme's, 128 for INT, 16 for NVFP4).
        scope: a preset of `quant.scope.SCOPES`.
        include, exclude: regular expressions on module paths that widen or narrow the scope.
        mtp: `keep` the head as stored, or `quantize` it in the same scheme.
        text_only: drop the vision tower and declare `language_model_only`.
        method: `rtn` (data-free, streamed), or `awq` / `gptq` (llm-compressor, calibrated, whole model in memory).
        actorder: GPTQ with activation order (`desc_act`).
        calibration: a text file for awq / gptq and FP4 activations (JSON list or one text per line);
            default: the bundled prompts.
        samples: calibration texts used at most.
        checkpoint_format: `compressed-tensors`, or `modelopt` (NVFP4 with FP4 activations, with `hf_quant_config.json`).
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.
    """
    check_destination(Path(base), Path(out), overwrite=overwrite)
    plan = quant_plan(base, scheme=scheme, group_size=group_size, scope=scope, include=include, exclude=exclude, mtp=mtp,
                      text_only=text_only, method=method, actorder=actorder, checkpoint_format=checkpoint_format)
    if dry_run:
        return plan.write
    if plan.calibrated_modules:  # the one calibrated part of NVFP4: activation ranges, filled in before the write
        from mtpforge.quant.activations import input_amax
        from mtpforge.quant.calibrated import calibration_texts

        texts = calibration_texts(calibration)
        plan.input_amax.update(input_amax(plan.ckpt.root, plan.calibrated_modules, texts, max_samples=samples))
    if method == "rtn":
        apply_plan(plan.write, Path(out), overwrite=overwrite)
    else:
        _calibrate(plan, Path(out), calibration=calibration, samples=samples, overwrite=overwrite)
    return plan.write


def _calibrate(plan: QuantPlan, out: Path, *, calibration: str | None, samples: int, overwrite: bool) -> None:
    """llm-compressor into a scratch directory beside `out`; declare the head; publish it as it is, or stripped."""
    from mtpforge.quant.calibrated import calibration_texts, finish, in_temporary, quantize_calibrated, remove
    from mtpforge.surgery.strip import strip

    scratch = in_temporary(out.resolve())
    try:
        quantize_calibrated(plan.ckpt.root.resolve(), scratch, method=plan.method, weights=plan.weights, ignore=plan.ignore,
                            texts=calibration_texts(calibration), max_samples=samples)
        finish(scratch, mtp_ignore(plan.family))
        if plan.text_only:
            strip(str(scratch), str(out), overwrite=overwrite)
        else:
            apply_plan(_as_is(scratch), out, overwrite=overwrite)
    finally:
        remove(scratch)


def _as_is(folder: Path) -> WritePlan:
    """A plan that links every file of `folder` unchanged."""
    files = tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))
    shards = sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))
    return WritePlan("quantize", folder, files, (), {}, shards, ("publish llm-compressor's output",))

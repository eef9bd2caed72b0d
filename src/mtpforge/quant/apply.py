"""`quantize`: plan, calibrate what needs text, write, publish (hybrid-aware; the MTP head is never lost).

RTN is data-free and streamed tensor by tensor (memory bounded by the largest
tensor): INT4 / INT8 as compressed-tensors `pack-quantized`, NVFP4 as
`nvfp4-pack-quantized` or modelopt's layout. NVFP4 with FP4 activations
measures input ranges on calibration text first (`activations.py`). AWQ and
GPTQ run llm-compressor on the model in memory or, when it does not fit, with
its weights on disk and one layer in memory (`calibrated.py`, `loading.py`). A quantized head
with a calibrated trunk, or calibrated itself (`mtp_method="gptq"`), is done in
a second pass over the trunk's output (`head.py`). Every output is published by
`surgery.stage.apply_plan`: staged beside the destination under the output's
lock, validated, and made to appear in one atomic step (see
docs/surgery.md#safety).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import CheckpointLike
from mtpforge.families import MTP
from mtpforge.formats.schemes import COMPRESSED_TENSORS, GPTQ_FORMAT
from mtpforge.quant.calibration_data import Calibration
from mtpforge.quant.plan import QuantPlan, mtp_ignore, quant_plan
from mtpforge.surgery.stage import apply_plan, check_destination
from mtpforge.surgery.writeplan import WritePlan


def quantize(base: CheckpointLike, out: str | os.PathLike[str], *, scheme: str = "w4a16", group_size: int | None = None,
             scope: str = "all", include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), mtp: str = "keep",
             text_only: bool = False, method: str = "rtn", actorder: bool = False, calibration: str | None = None,
             samples: int = 64, checkpoint_format: str = COMPRESSED_TENSORS, overwrite: bool = False,
             dry_run: bool = False, mtp_method: str = "rtn", observer: str = "minmax", seq_len: int = 512,
             chat_template: bool = False, awq_mappings: list[tuple[str, list[str]]] | None = None, head_steps: int = 1,
             runtime: str = "auto", progress: Callable[[str], None] = lambda _: None) -> WritePlan:
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
        method: `rtn` (data-free, streamed), or `awq` / `gptq` (llm-compressor, calibrated; see `runtime`).
        actorder: GPTQ with activation order (`desc_act`).
        calibration: calibration text for awq / gptq, the head's GPTQ and FP4 activations: a text file (JSON list or
            one text per line), a dataset `NAME[:CONFIG][:SPLIT]`, or None: the bundled prompts.
        samples: calibration texts used at most.
        checkpoint_format: `compressed-tensors`, `modelopt` (NVFP4 with FP4 activations, with `hf_quant_config.json`), or
            `gptq` (symmetric INT as GPTQ v1 with `quantize_config.json`).
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.
        mtp_method: how a quantized head is quantized: `rtn`, or `gptq` on the inputs the quantized trunk gives it.
        observer: how scales are chosen, a key of `quant.observers.OBSERVERS` (`minmax`, `mse`).
        seq_len: tokens per calibration text at most.
        chat_template: render calibration texts through the tokenizer's chat template.
        awq_mappings: AWQ's smoothing as (smooth layer, balance layers) regexes; None: llm-compressor's defaults.
        head_steps: draft steps the head's GPTQ is calibrated on (1: the first draft position's inputs).
        runtime: where calibration holds the model: `memory`, `streamed` (weights on disk, one decoder layer in memory at
            a time, for the trunk's AWQ / GPTQ and the head's capture), or `auto` (streamed when it does not fit).
        progress: called with a line per stage (and per calibration text of the head's capture).
    """
    if checkpoint_format == GPTQ_FORMAT:  # run as compressed-tensors, then repacked (quant/gptq_output.py)
        from mtpforge.quant.gptq_output import quantize_as_gptq

        request = {k: v for k, v in locals().items() if k != "quantize_as_gptq"}  # this call's own arguments
        return quantize_as_gptq(quantize, request)
    check_destination(Path(base), Path(out), overwrite=overwrite)
    from mtpforge.quant.loading import check_runtime

    check_runtime(runtime)
    if awq_mappings and method != "awq":
        from mtpforge.errors import UsageError

        raise UsageError(f"AWQ mappings smooth layers for --method awq, not {method}", hint="--method awq, or drop the mappings")
    options: dict[str, Any] = {"scheme": scheme, "group_size": group_size, "scope": scope, "include": include, "exclude": exclude,
               "text_only": text_only, "method": method, "actorder": actorder, "checkpoint_format": checkpoint_format,
               "observer": observer}
    plan = quant_plan(base, mtp=mtp, mtp_method=mtp_method, **options)
    calib = Calibration(calibration, samples, seq_len, chat_template)
    needs_text = [what for what, needed in (
        (f"--method {method}", method != "rtn"), (f"--mtp-method {mtp_method}", plan.head_pass and mtp_method != "rtn"),
        (f"--scheme {scheme} (FP4 activations)", bool(plan.calibrated_modules))) if needed]
    if needs_text:
        from mtpforge.quant.calibration_data import require_tokenizer

        require_tokenizer(plan.ckpt.root, needs_text[0])  # before any work: a base without one cannot calibrate
    if dry_run:
        return plan.write
    token_ids = _token_ids(plan, calib) if needs_text else []
    if plan.calibrated_modules:  # the one calibrated part of NVFP4: activation ranges, filled in before the write
        from mtpforge.quant.activations import input_amax

        plan.input_amax.update(input_amax(plan.ckpt.root, plan.calibrated_modules, token_ids))
    if not plan.head_pass:
        _trunk(plan, Path(out), token_ids=token_ids, awq_mappings=awq_mappings, overwrite=overwrite, runtime=runtime,
               progress=progress)
        return plan.write
    from mtpforge.quant.calibrated import in_temporary, remove
    from mtpforge.quant.head import head_plan

    trunk = quant_plan(plan.ckpt, mtp="keep", **options)
    scratch = in_temporary(Path(out).resolve())
    try:
        _trunk(trunk, scratch, token_ids=token_ids, awq_mappings=awq_mappings, overwrite=False, runtime=runtime,
               progress=progress)
        head = {n: s for n, s in plan.chosen.items() if s.group == MTP}
        progress(f"head: {mtp_method.upper()} on {len(head)} weights" + (f", {calib.describe()}" if mtp_method != "rtn" else ""))
        written = head_plan(scratch, head, scheme=plan.scheme, group=plan.weights["group_size"], weights=plan.weights,
                            ignore=plan.ignore, mtp_pattern=mtp_ignore(plan.family), method=mtp_method, token_ids=token_ids,
                            steps=head_steps, runtime=runtime, progress=progress)
        apply_plan(written, Path(out), overwrite=overwrite)
    finally:
        remove(scratch)
    return plan.write


def _token_ids(plan: QuantPlan, calib: Calibration) -> list[list[int]]:
    from mtpforge.quant.calibration_data import token_ids

    return token_ids(plan.ckpt.root, calib)


def _trunk(plan: QuantPlan, out: Path, *, token_ids: list[list[int]], awq_mappings: list[tuple[str, list[str]]] | None,
           overwrite: bool, runtime: str, progress: Callable[[str], None]) -> None:
    """The single pass: RTN streamed, or llm-compressor's AWQ / GPTQ (the head as `plan` says: kept, or RTN with RTN)."""
    if plan.method == "rtn":
        progress(f"trunk: RTN, {len(plan.chosen)} weights")
        apply_plan(plan.write, out, overwrite=overwrite)
    else:
        progress(f"trunk: {plan.method.upper()} via llm-compressor on {len(token_ids)} texts")
        _calibrate(plan, out, token_ids=token_ids, awq_mappings=awq_mappings, overwrite=overwrite, runtime=runtime,
                   progress=progress)


def _calibrate(plan: QuantPlan, out: Path, *, token_ids: list[list[int]], awq_mappings: list[tuple[str, list[str]]] | None,
               overwrite: bool, runtime: str, progress: Callable[[str], None]) -> None:
    """llm-compressor into a scratch directory beside `out`; declare the head; publish it as it is, or stripped."""
    from mtpforge.quant.calibrated import finish, in_temporary, quantize_calibrated, remove
    from mtpforge.quant.preserve import restore_stored_dtypes
    from mtpforge.quant.resume import request_key
    from mtpforge.surgery.publish import as_user_error
    from mtpforge.surgery.strip import strip

    scratch = in_temporary(out.resolve())
    # Kept when the run stops (an interruption, a crash): the same request started again reuses its finished layers.
    resume = out.resolve().with_name(f".{out.name}.resume-{request_key(plan.ckpt.root, plan.weights, plan.ignore, token_ids)}")
    resume.mkdir(exist_ok=True)
    try:
        try:
            quantize_calibrated(plan.ckpt.root.resolve(), scratch, method=plan.method, weights=plan.weights,
                                ignore=plan.ignore, token_ids=token_ids, mappings=awq_mappings, resume=resume,
                                scheme=plan.scheme, runtime=runtime, progress=progress)
        except OSError as e:  # a full disk under the scratch (weights and activations kept on disk, the save): exit 3
            raise as_user_error(e, out) from e
        finish(scratch, mtp_ignore(plan.family))
        restore_stored_dtypes(plan.ckpt.root.resolve(), scratch)  # an FP32 vision tower stays FP32 (quant/preserve.py)
        if plan.text_only or _ships_no_vision(plan):
            strip(str(scratch), str(out), overwrite=overwrite)
        else:
            apply_plan(_as_is(scratch), out, overwrite=overwrite)
        shutil.rmtree(resume, ignore_errors=True)  # published: nothing left to resume
    finally:
        remove(scratch)


def _ships_no_vision(plan: QuantPlan) -> bool:
    """A base whose config has a vision tower but whose files have none (a text-only finetune): transformers builds the
    tower from config.json anyway and llm-compressor saves its random initialization, which must not be published."""
    from mtpforge.families import VISION

    return plan.family.has_vision(plan.ckpt.config) and not any(plan.family.group_of(n) == VISION for n in plan.ckpt.tensors)


def _as_is(folder: Path) -> WritePlan:
    """A plan that links every file of `folder` unchanged."""
    files = tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))
    shards = sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))
    return WritePlan("quantize", folder, files, (), {}, shards, ("publish llm-compressor's output",))

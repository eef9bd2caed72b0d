"""`mtpforge strip --vision`: a text-only build of a vision-language checkpoint.

Drops `model.visual.*`, declares `language_model_only: true`, and keeps the
`Qwen3_5ForConditionalGeneration` architecture, the `vision_config` and the
`model.language_model.*` names: engines that do not register the text-only
class still load it, with `--language-model-only` (docs/domain.md F15). Exact
vision module names leave the ignore lists (llm-compressor writes hundreds);
patterns stay. Only shards that held vision tensors are rewritten.
"""

from __future__ import annotations

from pathlib import Path

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.errors import MtpforgeError, UsageError
from mtpforge.families import VISION, detect_family
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.quant_lists import drop_names, edit_lists
from mtpforge.surgery.rebuild import hf_quant_config, rebuild
from mtpforge.surgery.stage import apply_plan, check_destination
from mtpforge.surgery.writeplan import WritePlan


class StripError(MtpforgeError):
    """There is nothing to strip."""


def plan_strip(target: CheckpointLike) -> WritePlan:
    """Describe the text-only build of `target` (pure; nothing is written).

    Raises:
        StripError: the architecture has no vision tower, or it is already stripped.
    """
    ckpt = as_checkpoint(target)
    family = detect_family(ckpt.config)
    if not family.has_vision(ckpt.config):
        arch = (ckpt.config.get("architectures") or ["?"])[0]
        raise StripError(f"{ckpt.root}: {family.name} ({arch}) has no vision tower to strip",
                         hint="a text-only architecture is served as it is; mtpforge inspect shows its groups")
    vision = {n for n in list(ckpt.tensors) + list(ckpt.unindexed) if family.group_of(n) == VISION}
    declared = family.language_model_only(ckpt.config)
    if not vision and declared:
        raise StripError(f"{ckpt.root}: already text-only (language_model_only: true, no vision tensors)")
    rb = rebuild(ckpt, drop=vision)
    config = {**ckpt.config, "language_model_only": True}
    config, hf_quant, lists_changed = edit_lists(config, hf_quant_config(ckpt), drop_names(family.vision_prefix))
    actions = [f"drop {len(vision)} vision tensors ({sum(ckpt.tensors[n].nbytes for n in vision if n in ckpt.tensors):,} bytes)"
               if vision else "no vision tensors to drop",
               "declare language_model_only: true (keep the architecture, vision_config and model.language_model.* names)"]
    if lists_changed:
        actions.append("remove exact model.visual.* names from the ignore / exclude lists")
    warnings = ["serve it with --language-model-only (vLLM) so that the engine does not build the vision tower"]
    return make_plan("strip", ckpt.root, rb, config, hf_quant, actions, warnings)


def strip(target: CheckpointLike, out: str, *, vision: bool = True, overwrite: bool = False, dry_run: bool = False) -> WritePlan:
    """Write a text-only build of `target` to `out`.

    Args:
        target: a vision-language checkpoint: a directory, or an open `Checkpoint`.
        out: the output directory (must not exist unless `overwrite`).
        vision: strip the vision tower (the only part strip removes today; required).
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.

    Returns:
        The plan that was (or, with `dry_run`, would be) carried out.
    """
    if not vision:
        raise UsageError("say what to strip: --vision", hint="mtpforge strip TARGET --vision --out OUT")
    check_destination(Path(target), Path(out), overwrite=overwrite)
    plan = plan_strip(target)
    if not dry_run:
        apply_plan(plan, Path(out), overwrite=overwrite)
    return plan

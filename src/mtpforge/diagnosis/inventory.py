"""Checks of the stored tensors against the inventory the config implies:
missing, unexpected or misshapen tensors, the MTP head's presence and
declaration, and the vision tower's."""

from __future__ import annotations

from mtpforge.checkpoint.header import FLOAT_DTYPES
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP, VISION, TensorSpec
from mtpforge.families.base import LINEAR, NORM, PARAM
from mtpforge.formats.stored import StoredWeight


def check_inventory(ctx: Context) -> list[Finding]:
    """tensor-missing / -unexpected / -shape-mismatch, mtp-missing / -incomplete / -undeclared, vision-*."""
    out: list[Finding] = []
    expected, stored = ctx.expected, ctx.stored
    loaded_mtp = ctx.loaded_mtp()
    undeclared = bool(loaded_mtp) and ctx.mtp_layers == 0
    head = f"{ctx.family.mtp_prefix}.*"  # mtp.*, model.layers.61.*, model.mtp_layers.*: where this family keeps it
    if undeclared:
        key = ctx.family.mtp_config_key
        out.append(finding("mtp-undeclared", f"{len(loaded_mtp)} MTP tensors ({head}) are stored "
                           "but config.json declares no MTP layer "
                           f"({key} is {ctx.family.setting(ctx.config, key)!r})", tensors=loaded_mtp, files=["config.json"]))
    if ctx.mtp_layers and not loaded_mtp:
        out.append(finding("mtp-missing", f"config.json declares {ctx.mtp_layers} MTP layer(s) but no {head} tensor is loaded: "
                           "speculative decoding would draft from absent weights (0% acceptance)", files=["config.json"]))
    vision_stored = ctx.stored_in(VISION)
    lm_only = ctx.family.language_model_only(ctx.config)
    if ctx.family.has_vision(ctx.config) and not lm_only and not vision_stored:
        out.append(finding("vision-missing-undeclared",
                           "the config is a vision-language wrapper without language_model_only: true, "
                           "but no model.visual.* tensor is stored: engines will try to load the vision tower",
                           files=["config.json"]))
    if lm_only and vision_stored:
        out.append(finding("vision-present-text-only",
                           f"language_model_only is true but {len(vision_stored)} vision tensors are still shipped",
                           tensors=vision_stored))

    missing = {"trunk": [], MTP: [], "other": []}  # type: dict[str, list[str]]
    bad_shape: list[str] = []
    bad_mtp: list[str] = []
    cast: dict[tuple[str, str], list[str]] = {}  # (stored, expected) float dtypes -> tensors the engine casts on load
    vision_absent = not vision_stored
    for name, spec in expected.items():
        weight = stored.get(name)
        if weight is None:
            if spec.group == VISION and vision_absent:
                continue  # the whole tower is absent: reported above, or declared text-only
            if spec.group == MTP:
                if loaded_mtp:
                    missing[MTP].append(name)
            else:
                missing["trunk"].append(name)
            continue
        problem = _mismatch(spec, weight)
        if problem:
            (bad_mtp if spec.group == MTP else bad_shape).append(f"{name}: {problem}")
        elif _is_cast(spec, weight):
            cast.setdefault((weight.dtype, spec.dtype), []).append(name)
    if missing["trunk"]:
        out.append(finding("tensor-missing",
                           f"{len(missing['trunk'])} tensors the config implies are not stored: {_head(missing['trunk'])}",
                           tensors=missing["trunk"]))
    if bad_shape:
        out.append(finding("tensor-shape-mismatch", f"{len(bad_shape)} tensors disagree with config.json: {_head(bad_shape)}",
                           tensors=[b.split(":")[0] for b in bad_shape]))
    if missing[MTP] or bad_mtp:
        parts = ([f"{len(missing[MTP])} missing ({_head(missing[MTP])})"] if missing[MTP] else []) + \
                ([f"{len(bad_mtp)} wrong ({_head(bad_mtp)})"] if bad_mtp else [])
        out.append(finding("mtp-incomplete", "the MTP head is incomplete: " + "; ".join(parts),
                           tensors=missing[MTP] + [b.split(":")[0] for b in bad_mtp]))
    for (stored_dtype, dtype), names in sorted(cast.items()):
        out.append(finding("dtype-cast", f"{len(names)} tensors are stored {stored_dtype} where config.json says {dtype} "
                           f"({_head(names)}): vLLM and SGLang cast them to {dtype} on load, so the head works as stored",
                           tensors=names))
    reported = {MTP} if undeclared else set()
    if lm_only:
        reported.add(VISION)  # vision-present-text-only says it
    unexpected = [n for n, group in ctx.groups.items() if n not in expected and group not in reported]
    if unexpected:
        out.append(finding("tensor-unexpected",
                           f"{len(unexpected)} stored tensors are not part of the model config.json describes: "
                           f"{_head(unexpected)}", tensors=unexpected))
    return out


def _mismatch(spec: TensorSpec, weight: StoredWeight) -> str | None:
    """A shape, or a dtype no engine turns into the expected one; None when the tensor loads as it should."""
    if weight.shape is not None and tuple(weight.shape) != spec.shape:
        return f"shape {list(weight.shape)}, expected {list(spec.shape)}"
    if weight.quantized:
        return None  # checked by the quantization checks
    dtype = weight.dtype
    if dtype == spec.dtype or _is_cast(spec, weight):
        return None
    if spec.kind in (NORM, PARAM) and dtype == "F32":
        return None  # norms and GDN parameters are legitimately kept in float32 by some exporters
    if spec.kind == LINEAR and dtype not in FLOAT_DTYPES:
        return None  # an unpaired quantized dtype: the quantization checks name it
    return f"dtype {dtype}, expected {spec.dtype}"


def _is_cast(spec: TensorSpec, weight: StoredWeight) -> bool:
    """A float tensor stored in another float dtype than the config's, which the engine casts on load.

    vLLM's default weight loader copies each checkpoint tensor into a parameter of the model
    dtype (`param.data.copy_(loaded_weight)`, a casting copy), as does SGLang's: an F16 head in a
    BF16 checkpoint loads and drafts. Norms and GDN parameters kept in F32 are the exporters'
    common choice and not even worth a note.
    """
    dtype = weight.dtype
    if weight.quantized or dtype == spec.dtype or dtype not in FLOAT_DTYPES or spec.dtype not in FLOAT_DTYPES:
        return False
    return not (spec.kind in (NORM, PARAM) and dtype == "F32")


def _head(items: list[str], n: int = 3) -> str:
    shown = ", ".join(sorted(items)[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")

"""`mtpforge doctor --fix`: apply every fix that needs no donor.

Fixed here: an unindexed head (indexed), ignore / exclude lists that miss the
head or name it module by module (`re:^mtp.*`, `mtp*`), a wrong `total_size`
(always recomputed: an AutoRound sidecar left out of it included), an undeclared
head (declared with the layer count found), a missing `language_model_only` on a
build without vision tensors, and MTP norms stored in the wrong convention (each
shifted key restored by subtracting its shift; the others untouched).
Everything else is listed with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mtpforge.checkpoint import Checkpoint, CheckpointLike, as_checkpoint
from mtpforge.checkpoint.header import TensorInfo
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.doctor import DoctorReport, Finding, doctor
from mtpforge.diagnosis.norms import shifted_norms
from mtpforge.families import detect_family
from mtpforge.formats.values import encode
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.quant_lists import edit_lists, exclude_prefix, head_exclusion
from mtpforge.surgery.rebuild import hf_quant_config, rebuild
from mtpforge.surgery.sources import Computed, FileRange
from mtpforge.surgery.stage import apply_plan, check_destination
from mtpforge.surgery.writeplan import NewShard, TensorCopy, WritePlan

FIXABLE = frozenset({"mtp-unindexed", "mtp-quant-uncovered", "mtp-ignore-fused-unsafe", "index-total-size",
                     "mtp-undeclared", "vision-missing-undeclared", "mtp-norm-convention"})


@dataclass(frozen=True)
class FixResult:
    """What `--fix` did: the plan (None when nothing was fixable), the findings it could not fix, and the output's diagnosis."""

    plan: WritePlan | None
    unfixable: tuple[Finding, ...]
    after: DoctorReport | None


def plan_fix(path: CheckpointLike, report: DoctorReport) -> WritePlan | None:
    """The plan fixing `report`'s fixable findings in `path`, or None when there are none."""
    fixable = [f for f in report.findings if f.code in FIXABLE]
    if not fixable:
        return None
    ckpt = as_checkpoint(path)
    family = detect_family(ckpt.config)
    codes = {f.code for f in fixable}
    config, hf_quant = ckpt.config, hf_quant_config(ckpt)
    actions: list[str] = []
    drop: set[str] = set()
    add: list[NewShard] = []
    for f in fixable:
        if f.code == "mtp-unindexed":
            shard = f.files[0]
            header = ckpt.headers[shard]
            name = shard if set(header.tensors) == set(f.tensors) else "mtp.safetensors"
            drop |= set(f.tensors)
            add.append(NewShard(name, tuple(TensorCopy(t.name, t.dtype, t.shape, FileRange(ckpt.root / shard, t.begin, t.end))
                                            for t in sorted((header.tensors[n] for n in f.tensors), key=lambda t: t.begin))))
            moved = f" (moved to {name})" if name != shard else ""
            actions.append(f"index the {len(f.tensors)} MTP tensors of {shard}" + moved)
    if codes & {"mtp-quant-uncovered", "mtp-ignore-fused-unsafe"}:
        config, hf_quant, _ = edit_lists(config, hf_quant, exclude_prefix(family.mtp_prefix))
        actions.append(f"exclude the MTP head from quantization: {head_exclusion(config, family.mtp_prefix)}")
    if "mtp-undeclared" in codes:
        # the family knows where its layers sit (mtp.layers.{j}, model.layers.{num_hidden_layers + j}, model.mtp_layers.{j});
        # a head whose names carry no layer index (e.g. a bare `mtp.fc`) is one layer
        layers = len({i for n in ckpt.tensors if (i := family.mtp_layer_index(n)) is not None}) or 1
        config = family.with_setting(config, family.mtp_config_key, layers)
        actions.append(f"declare {family.mtp_config_key} = {layers}")
    if "vision-missing-undeclared" in codes:
        config = {**config, "language_model_only": True}
        actions.append("declare language_model_only: true (no vision tensors are shipped)")
    if "index-total-size" in codes:
        actions.append("recompute metadata.total_size from the tensors' bytes")
    replace: dict[str, Callable[[TensorInfo], list[TensorCopy]]] = {}
    if "mtp-norm-convention" in codes:
        shifts = shifted_norms(Context(ckpt, family))
        replace = {name: partial(_unshifted, ckpt, shift) for name, shift in shifts.items()}
        actions += [f"restore the offset convention of {name} (stored values {-shift:+d})"
                    for name, shift in sorted(shifts.items())]
    rb = rebuild(ckpt, drop=drop, add=tuple(add), replace=replace)
    return make_plan("doctor-fix", ckpt.root, rb, config, hf_quant, actions, [])


def _unshifted(ckpt: Checkpoint, shift: int, t: TensorInfo) -> list[TensorCopy]:
    """`t` with `shift` subtracted from every value, in its own dtype: computed when the writer reaches it."""
    def compute() -> bytes:
        return encode(t.dtype, ckpt.read(t).astype("float64") - shift)
    return [TensorCopy(t.name, t.dtype, t.shape, Computed(f"{t.name} {-shift:+d}", compute, t.nbytes))]


def fix(path: CheckpointLike, out: str, *, overwrite: bool = False, dry_run: bool = False) -> FixResult:
    """Diagnose `path`, write a copy with every donor-free fix applied to `out`, and diagnose the copy.

    Args:
        path: the checkpoint to repair (never modified): a directory, or an open `Checkpoint`.
        out: the output directory (must not exist unless `overwrite`).
        overwrite: replace `out` if it exists.
        dry_run: return the plan without writing anything.
    """
    check_destination(Path(path), Path(out), overwrite=overwrite)
    ckpt = as_checkpoint(path)
    report = doctor(ckpt)
    plan = plan_fix(ckpt, report)
    unfixable = tuple(f for f in report.findings if f.code not in FIXABLE)
    if plan is None or dry_run:
        return FixResult(plan, unfixable, None)
    apply_plan(plan, Path(out), overwrite=overwrite)
    after = doctor(out)
    return FixResult(plan, after.findings, after)  # what remains is what --fix could not fix

"""`mtpforge graft`: put a donor's MTP head into a target, indexed, excluded from
quantization and declared, so that the engines load it and it drafts.

Everything is checked before a byte is written: the donor's family and
dimensions must match the target's, its head must be complete and in the
target's expert layout, and its norms must be in the target trunk's
convention. Across a pruned MoE (a target that kept fewer routed experts than
its base), the donor head's router and experts are counted first: a head that
routes over 256 experts cannot run on a trunk of 128, and the error names the
tensor and both counts. The dimensions compared are the family's
(`Family.head_dims`: MLA ranks and the trunk depth for DeepSeek / GLM). The
donor may be a local checkpoint or a hub repository, of which only the index,
the headers of the shards holding the head and the head's bytes are fetched.
The head's file (`--shard-name`) is a plain, not hidden `.safetensors` name
that no kept shard has, and neither the target nor a local donor may overlap
`--out` (`surgery.publish`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtpforge.checkpoint import Checkpoint, CheckpointLike, as_checkpoint, open_checkpoint
from mtpforge.checkpoint.header import FLOAT_DTYPES, TensorInfo
from mtpforge.checkpoint.http import fetch_range
from mtpforge.checkpoint.remote import RemoteRepo, is_repo_id
from mtpforge.diagnosis.norms import SHIFT_THRESHOLD, norm_shift
from mtpforge.errors import CheckpointError, MtpforgeError
from mtpforge.families import MTP, Family, TensorSpec, detect_family, expected_inventory
from mtpforge.formats.stored import resolve
from mtpforge.formats.values import decode
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.quant_lists import edit_lists, exclude_prefix
from mtpforge.surgery.rebuild import hf_quant_config, rebuild
from mtpforge.surgery.sources import FileRange
from mtpforge.surgery.stage import apply_plan, check_destination
from mtpforge.surgery.writeplan import ByteSource, NewShard, TensorCopy, WritePlan, check_file_name


class GraftError(MtpforgeError):
    """The donor cannot serve the target, or there is nothing to graft."""


@dataclass(frozen=True)
class Donor:
    """Where the head comes from: its config, its tensors' locations, and how to read them."""

    name: str
    revision: str | None
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]  # at least every mtp.* tensor the donor loads
    source: Callable[[TensorInfo], ByteSource]
    read: Callable[[TensorInfo], np.ndarray]


def open_donor(donor: str, *, revision: str = "main") -> Donor:
    """A local checkpoint directory, or a hub repository id (`org/name`)."""
    if os.path.exists(donor):
        ckpt = open_checkpoint(donor)
        return Donor(str(donor), None, ckpt.config, ckpt.tensors,
                     lambda t: FileRange(ckpt.root / t.shard, t.begin, t.end), ckpt.read)
    if not is_repo_id(donor):
        raise CheckpointError(f"donor {donor!r} is neither a local directory nor a hub repository id (org/name)",
                              hint="pass the base checkpoint directory, or its hub id such as Qwen/Qwen3.6-27B")
    repo = RemoteRepo(donor, revision)
    config = repo.json_file("config.json")
    family = detect_family(config)
    weight_map = repo.weight_map()
    shards = {s for n, s in weight_map.items() if family.group_of(n) == MTP} if weight_map else {"model.safetensors"}
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(shards):
        header = repo.shard_header(shard)
        tensors.update({n: t for n, t in header.tensors.items() if weight_map is None or weight_map.get(n) == shard})

    def read(t: TensorInfo) -> np.ndarray:
        return decode(t.dtype, t.shape, fetch_range(repo.url(t.shard), t.begin, t.end, repo.headers))

    return Donor(donor, revision, config, tensors, lambda t: repo.tensor_source(t.shard, t.begin, t.end), read)


def plan_graft(target: CheckpointLike, donor: Donor, *, shard_name: str = "mtp.safetensors") -> WritePlan:
    """Validate the graft of `donor`'s head into `target` and describe the output (pure; nothing is written).

    Raises:
        GraftError: the families or dimensions differ, or the donor has no complete BF16 head.
    """
    check_file_name(shard_name, option="--shard-name", suffix=".safetensors")
    ckpt = as_checkpoint(target)
    family = detect_family(ckpt.config)
    donor_family = detect_family(donor.config)
    if donor_family.name != family.name:
        raise GraftError(f"donor {donor.name} is {donor_family.name} but the target is {family.name}",
                         hint="graft from the target's own base model")
    layers = donor_family.mtp_layers(donor.config)
    head = {n: w for n, w in resolve(donor.tensors).items() if donor_family.group_of(n) == MTP}
    check_expert_count(family, ckpt.config, donor, donor_family, sorted(head))
    _check_dims(family, ckpt.config, donor)
    quantized = sorted(n for n, w in head.items() if w.quantized)
    if quantized:
        raise GraftError(f"donor {donor.name}'s MTP head is quantized ({head[quantized[0]].format}, {len(quantized)} weights): "
                         "it is not an unquantized head to copy as stored",
                         hint="graft from the BF16 base, whose head graft copies as stored")
    head_names = sorted(head)
    if not head_names:
        raise GraftError(f"donor {donor.name} has no {donor_family.mtp_prefix}.* tensor: there is nothing to graft",
                         hint="use the base model that shipped the MTP head (e.g. Qwen/Qwen3.6-27B)")
    config = family.with_setting(ckpt.config, family.mtp_config_key, layers)
    # The head's layout is read from the donor's names (a fused head beside a per-expert trunk is a real layout;
    # tied copies of the embedding / lm_head are copied when the donor ships them), the trunk's from the target's.
    layout = [n for n in ckpt.tensors if family.group_of(n) != MTP] + head_names
    expected = {n: s for n, s in expected_inventory(family, config, layout).items() if s.group == MTP}
    _check_head(donor, expected, head_names)
    _check_norms(ckpt, donor, family, config)

    drop = {n for n in ckpt.tensors if family.group_of(n) == MTP} | {n for n in ckpt.unindexed if family.group_of(n) == MTP}
    metadata = (("format", "pt"), ("mtp_source", donor.name), ("mtp_revision", donor.revision or "local"))
    copies = tuple(TensorCopy(n, donor.tensors[n].dtype, donor.tensors[n].shape, donor.source(donor.tensors[n]))
                   for n in expected)
    rb = rebuild(ckpt, drop=drop, add=(NewShard(shard_name, copies, metadata),))
    config, hf_quant, excluded = edit_lists(config, hf_quant_config(ckpt), exclude_prefix(family.mtp_prefix))
    actions = [f"{'replace the existing' if drop else 'add the'} MTP head: {len(expected)} tensors from {donor.name}"
               f"{' @ ' + donor.revision if donor.revision else ''} into {shard_name}",
               f"declare {family.mtp_config_key} = {layers} in config.json"]
    if drop:
        actions.append(f"remove {len(drop)} old {family.mtp_prefix}.* tensors")
    if excluded:
        actions.append(f"exclude the head from quantization as the engines read it (re:^{family.mtp_prefix}.* / "
                       f"{family.mtp_prefix}*)")
    return make_plan("graft", ckpt.root, rb, config, hf_quant, actions, _provenance_warnings(ckpt, donor))


def graft(target: CheckpointLike, donor: str, out: str, *, revision: str = "main",
          shard_name: str = "mtp.safetensors", overwrite: bool = False, dry_run: bool = False) -> WritePlan:
    """Graft `donor`'s MTP head into `target`, writing the result to `out`.

    Args:
        target: the checkpoint that lacks (or has a broken) head: a directory, or an open `Checkpoint`.
        donor: a local checkpoint or hub repository id holding the head, normally the target's base.
        out: the output directory (must not exist unless `overwrite`).
        revision: the hub revision of a remote donor.
        shard_name: the file the head is written to: a plain, not hidden `.safetensors` name inside `out`.
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.

    Returns:
        The plan that was (or, with `dry_run`, would be) carried out.
    """
    check_file_name(shard_name, option="--shard-name", suffix=".safetensors")
    check_destination([Path(target), *([Path(donor)] if os.path.exists(donor) else [])], Path(out), overwrite=overwrite)
    plan = plan_graft(as_checkpoint(target), open_donor(donor, revision=revision), shard_name=shard_name)
    if not dry_run:
        apply_plan(plan, Path(out), overwrite=overwrite)
    return plan


def check_expert_count(family: Family, config: dict[str, Any], donor: Donor, donor_family: Family,
                       head_names: list[str]) -> None:
    """Refuse a head whose routed experts are not the target's: what a graft across a pruned MoE gets wrong.

    The stored head is counted (its router's rows, a fused expert tensor's first dimension, or the
    per-expert indices) as well as the donor's config, so the error names the tensor and both counts.
    """
    want = family.expert_count(config)
    key = family.expert_config_key
    hint = ("the target's MoE was pruned (or the donor's was): graft the head of the checkpoint the target was pruned "
            "from after pruning its experts the same way, or a donor with the target's experts")
    for name, count in _head_expert_counts(donor, donor_family, head_names):
        if count != want:
            raise GraftError(f"donor {donor.name}'s MTP tensor {name} holds {count} routed experts but the target has "
                             f"{want} ({key} in config.json)", hint=hint)
    declared = donor_family.expert_count(donor.config)
    if declared != want:
        raise GraftError(f"donor {donor.name} declares {declared} routed experts ({key}) but the target has {want}",
                         hint=hint)


def _head_expert_counts(donor: Donor, family: Family, head_names: list[str]) -> list[tuple[str, int]]:
    """(tensor, experts it holds) for the head's routers, fused expert tensors and per-expert weights."""
    counts: list[tuple[str, int]] = []
    per_expert: dict[str, int] = {}  # the experts module -> highest index + 1
    for name in head_names:
        shape = donor.tensors[name].shape if name in donor.tensors else None
        if name.endswith(".mlp.gate.weight") and shape:
            counts.append((name, shape[0]))
        elif name.endswith((".experts.gate_up_proj", ".experts.down_proj")) and shape:
            counts.append((name, shape[0]))
        elif ".experts." in name and (index := name.split(".experts.")[1].split(".")[0]).isdigit():
            module = name.split(".experts.")[0] + ".experts"
            per_expert[module] = max(per_expert.get(module, 0), int(index) + 1)
    counts += [(f"{module}.*", n) for module, n in sorted(per_expert.items())]
    return counts


def _check_dims(family: Family, config: dict[str, Any], donor: Donor) -> None:
    mine, theirs = family.head_dims(config), family.head_dims(donor.config)
    wrong = [f"{d}: target {mine[d]} vs donor {theirs[d]}" for d in mine if mine[d] != theirs.get(d)]
    if family.dtype(config) != family.dtype(donor.config):
        wrong.append(f"dtype: target {family.dtype(config)} vs donor {family.dtype(donor.config)}")
    if wrong:
        raise GraftError(f"donor {donor.name} cannot serve this target: " + "; ".join(wrong),
                         hint="graft from the base model the target was trained or quantized from")


def _check_head(donor: Donor, expected: dict[str, TensorSpec], head_names: list[str]) -> None:
    missing = sorted(set(expected) - set(head_names))
    extra = sorted(set(head_names) - set(expected))
    if missing or extra:
        detail = (f"missing {len(missing)} ({', '.join(missing[:3])})" if missing else "") + \
                 ("; " if missing and extra else "") + (f"unexpected {len(extra)} ({', '.join(extra[:3])})" if extra else "")
        raise GraftError(f"donor {donor.name}'s MTP head does not match the target's layout: {detail}",
                         hint="the donor's head is incomplete or uses another expert layout; use the original base")
    bad = [f"{n} {list(donor.tensors[n].shape)} {donor.tensors[n].dtype}" for n, s in expected.items()
           if donor.tensors[n].shape != s.shape or donor.tensors[n].dtype not in FLOAT_DTYPES]
    if bad:
        raise GraftError(f"donor {donor.name}'s MTP tensors are not an unquantized head of the target's shape: "
                         f"{', '.join(bad[:3])}",
                         hint="graft from a BF16 base, whose head graft copies as stored")


def _check_norms(ckpt: Checkpoint, donor: Donor, family: Family, config: dict[str, Any]) -> None:
    expected = expected_inventory(family, config, ckpt.tensors)

    def mean(read: Callable[[TensorInfo], np.ndarray], tensors: dict[str, TensorInfo], spec: TensorSpec) -> float | None:
        info = tensors.get(spec.name)
        return float(read(info).mean()) if info is not None and info.dtype in FLOAT_DTYPES else None

    shift, rows = norm_shift(expected, lambda s: mean(donor.read, donor.tensors, s), lambda s: mean(ckpt.read, ckpt.tensors, s))
    if abs(shift) >= SHIFT_THRESHOLD:
        raise GraftError(f"the donor head's norms are shifted by {shift:+.2f} relative to the target trunk's "
                         f"(e.g. {rows[0][0]}: {rows[0][1]:+.2f} vs {rows[0][2]:+.2f}); grafted, the head would collapse",
                         hint="one side was converted with a +1 norm shift (MLX/GGUF); graft from an original HF checkpoint")


def _provenance_warnings(ckpt: Checkpoint, donor: Donor) -> list[str]:
    base = recorded_base(ckpt)
    if base is None:
        return ["the target records no base_model: make sure the donor is its exact base "
                "(a head from another finetune drafts worse)"]
    donor_id = donor.name.rstrip("/")
    if donor_id != base and Path(donor_id).name != base.split("/")[-1]:
        return [f"the donor {donor.name} is not the target's recorded base {base}: the head works but drafts less well (F19)"]
    return []


def recorded_base(ckpt: Checkpoint) -> str | None:
    """`base_model` from the model card's YAML front matter (the Hugging Face convention), if any."""
    if "README.md" not in ckpt.files:
        return None
    text = (ckpt.root / "README.md").read_text(encoding="utf-8", errors="replace")
    front = re.match(r"---\n(.*?)\n---", text, re.S)
    if not front:
        return None
    match = re.search(r"^base_model:\s*(?:\n\s*-\s*)?['\"]?([\w./-]+)", front.group(1), re.M)
    return match.group(1) if match else None

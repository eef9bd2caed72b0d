"""`mtpforge quantize`: hybrid-aware quantization that never loses the MTP head.

Today: data-free round-to-nearest INT (W4A16 / W8A16, symmetric or with a zero
point, any group size or per channel) written as compressed-tensors
`pack-quantized`, streamed tensor by tensor. The scope comes from the family
rules: trunk Linear weights, except what must stay high precision (conv1d,
A_log, dt_bias, norms, routers), GDN `in_proj_a` / `in_proj_b`, and MoE
experts. The MTP head stays as stored and is excluded with `re:^mtp.*`; the
vision tower stays BF16 (`re:^model\\.visual\\..*`); every other unquantized Linear is
ignored by exact name, whole fused groups together.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import Checkpoint, open_checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS, FLOAT_DTYPES
from mtpforge.errors import UsageError
from mtpforge.families import TRUNK, Family, TensorSpec, detect_family, expected_inventory
from mtpforge.families.base import LINEAR
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.plan import NewShard, Plan, TensorCopy
from mtpforge.surgery.rebuild import REWRITTEN_FILES, Rebuild, require_readable
from mtpforge.surgery.sources import Computed, FileRange
from mtpforge.surgery.stage import apply_plan, check_destination

SCHEMES = {"w4a16": (4, True), "w4a16-asym": (4, False), "w8a16": (8, True), "w8a16-asym": (8, False)}
DEFAULT_GROUP = {4: 128, 8: None}  # compressed-tensors presets: W4A16 group 128, W8A16 per channel


def in_scope(spec: TensorSpec) -> bool:
    """Trunk Linear weights that engines run quantized; everything the family keeps high precision stays."""
    return spec.kind == LINEAR and spec.group == TRUNK and not (spec.keep_high_precision or spec.small_proj or spec.expert)


def plan_quantize(base: str | os.PathLike[str], *, scheme: str = "w4a16", group_size: int | None = None) -> Plan:
    """Describe the RTN quantization of `base` (pure; nothing is read beyond headers, nothing written)."""
    if scheme not in SCHEMES:
        raise UsageError(f"unknown scheme {scheme!r}", hint=f"one of {', '.join(SCHEMES)}")
    bits, symmetric = SCHEMES[scheme]
    group = group_size if group_size is not None else DEFAULT_GROUP[bits]
    ckpt = open_checkpoint(base)
    require_readable(ckpt)
    if ckpt.quant_configs or ckpt.foreign_quant_method:
        raise UsageError(f"{base} is already quantized", hint="quantize the BF16 base")
    family = detect_family(ckpt.config)
    expected = expected_inventory(family, ckpt.config, ckpt.tensors)
    chosen = {n: s for n, s in expected.items() if in_scope(s) and n in ckpt.tensors and ckpt.tensors[n].dtype in FLOAT_DTYPES}
    if group:
        bad = sorted(n for n, s in chosen.items() if s.shape[1] % group)
        if bad:
            raise UsageError(f"group size {group} does not divide the inputs of {bad[0]} {list(expected[bad[0]].shape)}",
                             hint="choose a group size that divides every quantized layer's input dimension")
    linked, written, weight_map, sizes, linked_bytes = [], [], {}, {}, 0
    for shard, header in sorted(ckpt.headers.items()):
        names = [t.name for t in sorted(header.tensors.values(), key=lambda t: t.begin)]
        if not any(n in chosen for n in names):
            linked.append(shard)
            linked_bytes += header.file_bytes
            sizes.update({n: header.tensors[n].nbytes for n in names})
            weight_map.update({n: shard for n in names})
            continue
        copies: list[TensorCopy] = []
        for n in names:
            info = header.tensors[n]
            copies += _quantized(ckpt, info, bits, group, symmetric) if n in chosen else \
                [TensorCopy(n, info.dtype, info.shape, FileRange(ckpt.root / shard, info.begin, info.end))]
        written.append(NewShard(shard, tuple(copies)))
        weight_map.update({c.name: shard for c in copies})
        sizes.update({c.name: c.nbytes for c in copies})
    other = tuple(f for f in sorted(ckpt.files) if not f.endswith(".safetensors") and f not in REWRITTEN_FILES)
    rb = Rebuild(tuple(linked) + other, tuple(written), weight_map, sizes, linked_bytes, ())
    config = {**ckpt.config, "quantization_config": _ct_config(family, expected, chosen, bits, group, symmetric)}
    actions = [f"quantize {len(chosen)} trunk Linear weights to {scheme} ({'group ' + str(group) if group else 'per channel'}, RTN)",
               "keep the MTP head as stored, excluded with re:^mtp.*", "keep conv1d, A_log, dt_bias, norms, in_proj_a/b and embeddings high precision"]
    return make_plan("quantize", ckpt.root, rb, config, None, actions, [])


def quantize(base: str, out: str, *, scheme: str = "w4a16", group_size: int | None = None, overwrite: bool = False,
             dry_run: bool = False) -> Plan:
    """Quantize `base` into `out` (RTN, compressed-tensors pack-quantized), keeping the MTP head.

    Args:
        base: the BF16 checkpoint.
        out: the output directory (must not exist unless `overwrite`).
        scheme: `w4a16`, `w4a16-asym`, `w8a16` or `w8a16-asym`.
        group_size: inputs per scale (default: 128 for 4-bit, per channel for 8-bit).
        overwrite: replace `out` if it exists.
        dry_run: validate and return the plan without writing anything.
    """
    check_destination(Path(base), Path(out), overwrite=overwrite)
    plan = plan_quantize(base, scheme=scheme, group_size=group_size)
    if not dry_run:
        apply_plan(plan, Path(out), overwrite=overwrite)
    return plan


def _quantized(ckpt: Checkpoint, info: Any, bits: int, group: int | None, symmetric: bool) -> list[TensorCopy]:
    """The companions standing for one weight; computed when the writer reaches them."""
    out, inp = info.shape
    groups = inp // group if group else 1
    module = info.name.rsplit(".", 1)[0]
    memo: dict[str, Any] = {}

    def part(key: str) -> bytes:
        import torch  # only when the plan is applied: planning stays torch-free

        from mtpforge.quant.int_affine import quantize_int
        from mtpforge.reference.dequant import read_tensor

        if not memo:  # quantize once, when the writer reaches the first companion
            memo.update(quantize_int(read_tensor(ckpt, info), bits=bits, group_size=group, symmetric=symmetric))
        return memo.pop(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes()

    shapes = {"weight_packed": ("I32", (out, inp * bits // 32)), "weight_scale": ("BF16", (out, groups)), "weight_shape": ("I64", (2,))}
    if not symmetric:
        shapes["weight_zero_point"] = ("I32", (-(-out * bits // 32), groups))
    copies = []
    for key, (dtype, shape) in shapes.items():
        nbytes = DTYPE_BITS[dtype] // 8 * math.prod(shape)
        copies.append(TensorCopy(f"{module}.{key}", dtype, shape, Computed(f"{module}.{key}", lambda k=key: part(k), nbytes)))
    return copies


def _ct_config(family: Family, expected: dict[str, TensorSpec], chosen: dict[str, TensorSpec], bits: int, group: int | None,
               symmetric: bool) -> dict[str, Any]:
    skipped = sorted({s.module for n, s in expected.items() if s.kind == LINEAR and n not in chosen and s.group == TRUNK})
    # Patterns for the head and the tower match the fused names engines build; exact names for the rest.
    ignore = ["lm_head", *skipped, f"re:^{family.vision_prefix}\\..*", f"re:^{family.mtp_prefix}.*"]
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group" if group else "channel",
               "group_size": group, "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {}, "version": "0.19.0"}


__all__ = ["SCHEMES", "in_scope", "plan_quantize", "quantize"]

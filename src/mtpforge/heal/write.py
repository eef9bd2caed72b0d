"""The healed checkpoint as a `WritePlan`: every trunk, embedding and vision shard linked unchanged, the head rewritten.

The head is written under its stored names, in its stored dtype (a quantized head comes back in the config's
dtype, BF16, and is excluded from quantization as `graft` does), into the shard that held it alone, or
`mtp.safetensors` when it shared a shard with the trunk (that shard is then rewritten without it, its other
tensors copied byte for byte). Norm weights are written as the head holds them: Qwen3.5's `1 + w` convention is
the stored convention, so it is kept. The heal report travels as `mtpforge-heal.json`.
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial
from typing import Any

import torch

from mtpforge.checkpoint import Checkpoint
from mtpforge.errors import CheckpointError
from mtpforge.families import MTP, detect_family
from mtpforge.formats.dequant import TORCH_DTYPES
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.quant_lists import edit_lists, exclude_prefix
from mtpforge.surgery.rebuild import hf_quant_config, rebuild
from mtpforge.surgery.sources import Computed
from mtpforge.surgery.writeplan import NewShard, TensorCopy, WritePlan

REPORT_FILE = "mtpforge-heal.json"
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def head_tensors(ckpt: Checkpoint, state: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """Stored name -> (safetensors dtype, tensor) for every logical MTP weight of `ckpt`, from the head's `state`.

    Raises:
        CheckpointError: the trained head does not cover the stored head exactly (a bug, or an unexpected layout).
    """
    family = detect_family(ckpt.config)
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for name, weight in sorted(ckpt.stored.items()):
        if family.group_of(name) != MTP:
            continue
        tensor = _from_state(name[len(family.mtp_prefix) + 1:], state)
        if tensor is None or (weight.shape is not None and tuple(tensor.shape) != tuple(weight.shape)):
            raise CheckpointError(f"{ckpt.root}: the trained head has no tensor for {name} {weight.shape}",
                                  hint="heal supports heads in the layouts the reference runtime loads; report this")
        dtype = weight.dtype if not weight.quantized else family.dtype(ckpt.config)
        out[name] = (dtype, tensor)
    return out


def _from_state(local: str, state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    if local in state:
        return state[local]
    m = _EXPERT.match(local)  # per-expert names, held fused by the runtime (`reference.model.fuse_experts`)
    if not m:
        return None
    expert, part = int(m.group(2)), m.group(3)
    if part == "down_proj":
        fused = state.get(f"{m.group(1)}.down_proj")
        return None if fused is None else fused[expert]
    fused = state.get(f"{m.group(1)}.gate_up_proj")
    if fused is None:
        return None
    half = fused.shape[1] // 2
    return fused[expert, :half] if part == "gate_proj" else fused[expert, half:]


def _tensor_bytes(tensor: torch.Tensor, dtype: str) -> bytes:
    return tensor.detach().to("cpu", TORCH_DTYPES[dtype]).contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def plan_heal(ckpt: Checkpoint, state: dict[str, torch.Tensor], report: dict[str, Any]) -> WritePlan:
    """The output: the input with its MTP head replaced by `state`, and `report` as `mtpforge-heal.json`."""
    family = detect_family(ckpt.config)
    tensors = head_tensors(ckpt, state)
    stored_head = {n for n in (*ckpt.tensors, *ckpt.unindexed) if family.group_of(n) == MTP}
    holders = {ckpt.tensors[n].shard for n in stored_head if n in ckpt.tensors}
    alone = [s for s in holders if set(ckpt.headers[s].tensors) <= stored_head]
    shard_name = alone[0] if len(holders) == 1 and alone else "mtp.safetensors"
    copies = []
    for name, (dtype, tensor) in tensors.items():
        nbytes = tensor.numel() * TORCH_DTYPES[dtype].itemsize
        copies.append(TensorCopy(name, dtype, tuple(tensor.shape), Computed(name, partial(_tensor_bytes, tensor, dtype), nbytes)))
    metadata = (("format", "pt"), ("mtp_healed_by", "mtpforge heal"))
    rb = rebuild(ckpt, drop=stored_head, add=(NewShard(shard_name, tuple(copies), metadata),))
    rb = dataclasses.replace(rb, dropped_files=tuple(f for f in rb.dropped_files if f != shard_name))  # rewritten, not dropped
    config, hf_quant = ckpt.config, hf_quant_config(ckpt)
    actions = [f"replace the MTP head ({len(tensors)} tensors) with the healed one in {shard_name}, in its stored dtype",
               "link every trunk, embedding and vision shard unchanged"]
    if any(w.quantized for n, w in ckpt.stored.items() if family.group_of(n) == MTP):
        config, hf_quant, _ = edit_lists(config, hf_quant, exclude_prefix(family.mtp_prefix))
        actions.append("the quantized head comes back unquantized: exclude it from quantization (re:^mtp.* / mtp*)")
    plan = make_plan("heal", ckpt.root, rb, config, hf_quant, actions, [])
    return dataclasses.replace(plan, linked=tuple(n for n in plan.linked if n != REPORT_FILE),
                               json_files={**plan.json_files, REPORT_FILE: report})

"""Give every tensor a calibrated pass left unquantized the source's dtype, and its bytes where the pass did not change it.

llm-compressor needs the model in memory and transformers builds it in one
dtype (bfloat16, `load_for_calibration`), so its save writes every
tensor it did not quantize in that dtype: a vision tower, norms or gates the
source stores in FP32 (seed 003: "Vision Encoder FP32, original precision
preserved") or FP16 come out BF16. And for the calibration it turns each
offset norm (`x * (1 + w)`: Qwen3.5, Qwen3-Next, Gemma) into `1 + w` and back
in bfloat16 (llmcompressor/modeling/offset_norm.py), which moves about half
of every norm's values by one BF16 step even where nothing smooths it.

This pass compares each tensor of the output with the source's tensor of the
same name and shape: bytes equal, nothing to do; the output is what the
source became through the load alone (rounded to BF16, and through the
offset-norm round trip), the source's own bytes are written; the pass
changed the values (AWQ folds its smoothing into a norm), the new values are
kept, in the source's dtype. Quantized tensors (their own names, FP8 / INT
dtypes) are never touched. The rewrite is the streamed one every verb uses.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from mtpforge.checkpoint import Checkpoint, open_checkpoint
from mtpforge.checkpoint.header import TensorInfo
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.rebuild import hf_quant_config, rebuild
from mtpforge.surgery.sources import Computed, FileRange
from mtpforge.surgery.stage import apply_plan
from mtpforge.surgery.writeplan import TensorCopy

if TYPE_CHECKING:
    import torch

LOADED_DTYPE = "BF16"  # the dtype `load_for_calibration` builds the model in
FLOATS = frozenset({"F64", "F32", "F16", "BF16"})  # stored dtypes the load rounds to LOADED_DTYPE
SOURCE, CHANGED = "source", "changed"  # write the source's bytes / the pass's values in the source's dtype


def restore_stored_dtypes(base: Path, staging: Path) -> dict[str, str]:
    """Rewrite the calibrated output `staging` in place (see the module docstring); return tensor name -> SOURCE or
    CHANGED for each tensor rewritten (none: `staging` is left as it was)."""
    source, ckpt = open_checkpoint(base), open_checkpoint(staging)
    found = {n: how for n, how in ((n, _how(source, ckpt, n)) for n in sorted(ckpt.tensors)) if how is not None}
    if not found:
        return {}
    replace = {n: partial(_restored, source, ckpt, how) for n, how in found.items()}
    kept = sum(how == SOURCE for how in found.values())
    plan = make_plan("quantize", staging, rebuild(ckpt, replace=replace), dict(ckpt.config), hf_quant_config(ckpt),
                     [f"write {kept} unquantized tensors as the source stores them, "
                      f"{len(found) - kept} the pass changed in the source's dtype"], [])
    rewritten = staging.with_name(staging.name + ".dtypes")
    apply_plan(plan, rewritten)
    shutil.rmtree(staging)
    os.replace(rewritten, staging)
    return found


def _how(source: Checkpoint, ckpt: Checkpoint, name: str) -> str | None:
    """SOURCE, CHANGED, or None (the output already holds the source's bytes, or it is not a tensor the load rounded)."""
    info, stored = ckpt.tensors[name], source.tensors.get(name)
    if stored is None or stored.shape != info.shape or info.dtype != LOADED_DTYPE or stored.dtype not in FLOATS:
        return None
    if stored.dtype == info.dtype and _same_bytes(source, stored, ckpt, info):
        return None
    original, written = _read(source, stored), _read(ckpt, info)
    if any(written.equal(load) for load in _through_the_load(original)):
        return SOURCE
    return CHANGED if stored.dtype != info.dtype else None  # changed in the source's own dtype: already right


def _through_the_load(original: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What an untouched tensor can come out as: rounded to BF16, and then through `1 + w` and back (offset norms)."""
    import torch

    loaded = original.to(torch.bfloat16)
    return loaded, ((1.0 + loaded.float()).to(torch.bfloat16).float() - 1.0).to(torch.bfloat16)


def _restored(source: Checkpoint, ckpt: Checkpoint, how: str, info: TensorInfo) -> list[TensorCopy]:
    stored = source.tensors[info.name]
    bytes_from = FileRange(source.root / stored.shard, stored.begin, stored.end) if how == SOURCE \
        else Computed(info.name, partial(_cast, ckpt, info, stored.dtype), stored.nbytes)
    return [TensorCopy(info.name, stored.dtype, stored.shape, bytes_from)]


def _cast(ckpt: Checkpoint, info: TensorInfo, dtype: str) -> bytes:
    import torch

    from mtpforge.formats.dequant import TORCH_DTYPES

    return _read(ckpt, info).to(TORCH_DTYPES[dtype]).contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _read(ckpt: Checkpoint, info: TensorInfo) -> torch.Tensor:
    from mtpforge.checkpoint.tensors import read_tensor

    return read_tensor(ckpt, info)


def _same_bytes(a: Checkpoint, a_info: TensorInfo, b: Checkpoint, b_info: TensorInfo) -> bool:
    """The two stored tensors hold the same bytes (streamed: an embedding need not fit in memory twice)."""
    ours = FileRange(a.root / a_info.shard, a_info.begin, a_info.end).chunks()
    theirs = FileRange(b.root / b_info.shard, b_info.begin, b_info.end).chunks()
    return all(x == y for x, y in zip(ours, theirs, strict=True))  # same dtype and shape: the same chunks

"""Calibration that survives its own length: a line per layer with an ETA, and GPTQ and AWQ that resume per layer.

llm-compressor calibrates one decoder layer (a "subgraph") at a time and calls
`LifecycleCallbacks.sequential_epoch_end` once each layer is compressed. Here
that call is wrapped: it reports the layer's time and the ETA, and saves the
layer's result to `FOLDER/NNNN.safetensors`, written whole or not at all.

GPTQ saves its weights on the grid, scales and zero points. An interrupted GPTQ
run restarted with the same request reads those files back: their weights go
into the model and their modules are left out of the new run (so they are
neither calibrated nor solved again, only run forward to feed the next layer),
and their saved scales and zero points pack them afterwards
(`pack_resumed`). The activations into the first new layer come from the same
weights, so the result is the same as an uninterrupted run's, tensor for tensor.

AWQ saves what its smoothing changed (norm and balance-layer weights), in
`FOLDER/awq-KEY/` (KEY: its mappings), and a restart skips the finished layers'
mappings and puts their smoothed weights back at the end of the same layers;
the weights are then quantized once at the end as in an uninterrupted run
(`resume_awq`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# llm-compressor's names for a calibrating module's parameters: its weight and `{weight}_scale`, `{weight}_zero_point`
# (attributes of the module, not stored tensor names: those are `formats`' business).
WEIGHT = "weight"
SCALE, ZERO_POINT = f"{WEIGHT}_scale", f"{WEIGHT}_zero_point"
SUFFIXES = (WEIGHT, SCALE, ZERO_POINT)


def request_key(base: Path, weights: dict[str, Any], ignore: list[str], token_ids: list[list[int]]) -> str:
    """What makes saved layers reusable: the same base, scheme, scope and calibration tokens."""
    doc = json.dumps([str(base.resolve()), weights, ignore, token_ids], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def saved_layers(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the finished layers in `folder` (each module's weight, scale and zero point)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("[0-9][0-9][0-9][0-9].safetensors")):
        tensors.update(load_file(f))
    return tensors


def done_modules(saved: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n.removesuffix(f".{SCALE}") for n in saved if n.endswith(f".{SCALE}"))


def load_done(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put the saved layers' quantized weights into the model (their modules are then ignored by the new run); through
    compressed-tensors' `update_offload_parameter`, which also writes a weight kept on disk (`quant.loading`)."""
    from compressed_tensors.utils import update_offload_parameter

    with torch.no_grad():
        for module in done_modules(saved):
            dtype = model.get_parameter(f"{module}.weight").dtype
            update_offload_parameter(model.get_submodule(module), WEIGHT, saved[f"{module}.weight"].to(dtype))


def after_layer_saved(index: int) -> None:
    """Called after layer `index` is saved (tests stop a run here to interrupt it)."""


@contextlib.contextmanager
def per_layer(model: torch.nn.Module, total: int, folder: Path | None, progress: Callable[[str], None], *,
              method: str = "gptq", mappings: list[tuple[str, list[str]]] | None = None) -> Iterator[None]:
    """While llm-compressor runs `method`: after each layer, a progress line with the ETA and (with `folder`) the layer
    saved, or put back from an earlier run (AWQ; GPTQ's are put back before the run, `load_done`)."""
    from llmcompressor.core.session_functions import LifecycleCallbacks

    from mtpforge.quant.resume_awq import KeptSmoothing, awq_folder, awq_running

    original = LifecycleCallbacks.__dict__["sequential_epoch_end"]
    names = {id(m): n for n, m in model.named_modules()}
    start, count = time.monotonic(), [0]
    smoothing = KeptSmoothing(model, awq_folder(folder, mappings), progress) if method == "awq" and folder else None

    def epoch_end(cls: Any, modules: list[torch.nn.Module], **kwargs: Any) -> Any:
        if method == "awq" and not awq_running():  # AWQ is done: the QuantizationModifier's one pass over every weight
            result = original.__func__(cls, modules, **kwargs)
            progress(f"quantized the smoothed weights: {time.monotonic() - start:.0f} s so far")
            return result
        handled = smoothing.pending() if smoothing is not None else []  # read before AWQ consumes its statistics
        result = original.__func__(cls, modules, **kwargs)
        index = count[0]
        count[0] += 1
        if smoothing is not None:
            smoothing.layer_end(index, handled)
        elif folder is not None:
            _save(folder / f"{index:04d}.safetensors", modules, names)
        elapsed = time.monotonic() - start
        eta = elapsed / count[0] * max(total - count[0], 0)
        progress(f"calibrated layer {count[0]}/{total}: {elapsed:.0f} s so far, ETA {eta:.0f} s")
        after_layer_saved(index)
        return result

    LifecycleCallbacks.sequential_epoch_end = classmethod(epoch_end)
    try:
        with smoothing.skipping_done() if smoothing is not None else contextlib.nullcontext():
            yield
    finally:
        LifecycleCallbacks.sequential_epoch_end = original


def _save(file: Path, modules: list[torch.nn.Module], names: dict[int, str]) -> None:
    """The compressed modules of one layer, written whole (a temporary name, then a rename); kept if already there."""
    from safetensors.torch import save_file

    tensors = {f"{names[id(m)]}.{s}": getattr(m, s).detach().contiguous().clone()
               for m in modules if id(m) in names and hasattr(m, SCALE) for s in SUFFIXES if hasattr(m, s)}
    if file.exists() or not tensors:
        return
    partial = file.with_suffix(".partial")
    save_file(tensors, str(partial))
    os.replace(partial, file)


def pack_resumed(staging: Path, saved: dict[str, torch.Tensor], *, scheme: Any, group: int | None, weights: dict[str, Any],
                 ignore: list[str], out: Path) -> None:
    """Rewrite llm-compressor's output `staging` into `out`: the resumed layers (written dense, being ignored in the new
    run) packed with their saved scales and zero points, and no longer listed as ignored."""
    from functools import partial

    from mtpforge.checkpoint import open_checkpoint
    from mtpforge.formats.int_affine import quantize_int
    from mtpforge.quant.rtn import quantized_copies
    from mtpforge.surgery.output import make_plan
    from mtpforge.surgery.rebuild import rebuild
    from mtpforge.surgery.stage import apply_plan

    ckpt = open_checkpoint(staging)

    def packed(module: str, _w: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = saved[f"{module}.{SCALE}"]
        zero_point = saved.get(f"{module}.{ZERO_POINT}", torch.zeros(scale.shape, dtype=torch.int8))
        return quantize_int(saved[f"{module}.weight"], bits=weights["num_bits"], group_size=group, symmetric=weights["symmetric"],
                            qparams=(scale, zero_point))

    replace = {f"{m}.weight": partial(quantized_copies, ckpt, scheme=scheme, group=group, amax=None, input_amax={},
                                      compute=partial(packed, m)) for m in done_modules(saved)}
    config = dict(ckpt.config)
    qc = config["quantization_config"]
    # llm-compressor writes its ignore list expanded to module names, the resumed modules among them: take those out.
    resumed = set(done_modules(saved))
    config["quantization_config"] = {**qc, "ignore": [e for e in qc.get("ignore", ignore) if e not in resumed]}
    plan = make_plan("quantize", staging, rebuild(ckpt, replace=replace), config, None,
                     [f"pack {len(replace)} weights of the layers an earlier run finished"], [])
    apply_plan(plan, out)

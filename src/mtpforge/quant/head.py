"""The MTP head quantized after the trunk: GPTQ on the head's real inputs (or RTN), written into the trunk's output.

`quantize` with `mtp="quantize"` and a calibrated trunk or `mtp_method="gptq"`
runs in two passes: the trunk first (RTN, AWQ or GPTQ) with the head kept BF16,
then this pass on that output. The head's inputs come from running the
quantized trunk (`head_capture`), GPTQ runs on each chosen head Linear
(`head_gptq`), and the checkpoint is rewritten with the head's weights replaced
by their packed tensors: every other file is linked as it is. The config's
`re:^mtp.*` entry becomes the head's modules left BF16 (`mtp.fc` and any the
scope left out), so engines build the head's attention and MLP quantized under
the trunk's own config group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import open_checkpoint
from mtpforge.families import TensorSpec
from mtpforge.formats.schemes import Scheme
from mtpforge.quant.rtn import quantized_copies
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.rebuild import rebuild
from mtpforge.surgery.writeplan import WritePlan

HEAD_METHODS = ("rtn", "gptq")


def head_plan(trunk_done: Path, head: dict[str, TensorSpec], *, scheme: Scheme, group: int | None, weights: dict[str, Any],
              ignore: list[str], mtp_pattern: str, method: str, token_ids: list[list[int]], steps: int = 1,
              runtime: str = "auto", progress: Callable[[str], None] = lambda _: None) -> WritePlan:
    """The plan rewriting `trunk_done` with the head weights `head` quantized.

    Args:
        trunk_done: the checkpoint with its trunk quantized and its head unquantized, ignored by `mtp_pattern`.
        head: the head's weights to quantize, by tensor name.
        weights: the compressed-tensors `weights` arguments (the observer included).
        ignore: the full ignore list of a plan quantizing the head: its `mtp.` entries replace `mtp_pattern`.
        method: `gptq` (calibrated on `token_ids` through the quantized trunk) or `rtn` (the observer's grid, data-free).
        runtime: the reference runtime the trunk runs in for the capture (`auto`: streamed when it does not fit).
    """
    ckpt = open_checkpoint(trunk_done)
    prefix = mtp_pattern.removeprefix("re:^").removesuffix(".*")
    compute: dict[str, Callable[..., dict[str, Any]]] = {}
    if method == "gptq":
        from mtpforge.quant.head_capture import head_hessians

        modules = sorted({s.module for s in head.values()})
        hessians = head_hessians(trunk_done, modules, token_ids, prefix=prefix, steps=steps, runtime=runtime,
                                 progress=progress)
        for name, spec in head.items():  # each Hessian is taken from `hessians` when its weight is solved, then freed
            compute[name] = partial(_gptq, hessians=hessians, weights=weights, name=spec.module, progress=progress)
    else:
        from mtpforge.quant.observers import observed_int_tensors

        compute = {name: partial(observed_int_tensors, weights=weights) for name in head}
    replace = {n: partial(quantized_copies, ckpt, scheme=scheme, group=group, amax=None, input_amax={}, compute=compute[n])
               for n in head}
    config = copy.deepcopy(ckpt.config)
    qc = config["quantization_config"]
    kept = [e for e in ignore if e.startswith(prefix + ".")]
    qc["ignore"] = [e for e in qc.get("ignore", []) if e != mtp_pattern] + [e for e in kept if e not in qc.get("ignore", [])]
    how = "GPTQ on the inputs the quantized trunk gives it" if method == "gptq" else "RTN"
    actions = [f"quantize {len(head)} MTP head weights ({how}, observer {weights['observer']}); keep {', '.join(kept) or 'none'}"
               " BF16"]
    return make_plan("quantize", ckpt.root, rebuild(ckpt, replace=replace), config, None, actions, [])


def _gptq(w: Any, *, hessians: dict[str, Any], weights: dict[str, Any], name: str,
          progress: Callable[[str], None]) -> dict[str, Any]:
    from mtpforge.quant.head_gptq import gptq_int_tensors

    # popped: no reference outlives the solve (at 27B down_proj's [17408, 17408] float32 Hessian is 1.2 GB)
    tensors, loss = gptq_int_tensors(w, hessians.pop(name), weights)
    progress(f"head GPTQ: {name} loss {loss:.4g}")
    return tensors

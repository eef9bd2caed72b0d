"""The MTP head's real inputs, captured: the trunk's final hidden states and the embeddings of the next tokens.

transformers builds no MTP module, so no calibration tool sees the head. Here
the reference runtime (`mtpforge.reference`: transformers' trunk, the head as
vLLM runs it) reads the checkpoint whose trunk is already quantized (its
weights dequantized, so the head is calibrated on the hidden states it will
really get), runs the trunk over each calibration text, and feeds the head what
vLLM feeds it at draft step 1: `embed(token t+1)` and the trunk's hidden state
at t, at position t. With `steps > 1` the head's own output then stands in for
the hidden state at the next step (the draft chain at k > 1), teacher-forced.

Only the second moments of each quantized head Linear's input are kept (GPTQ's
Hessian, the statistic of llm-compressor's `accumulate_hessian`, accumulated in
place): one [in, in] float32 matrix per weight, whatever the number of texts.

Memory stays bounded at any size: the trunk runs in the reference runtime that
fits (`reference.runtime.open_runtime`: in memory when the model fits, else
streamed, one decoder layer resident and the embedding rows read as needed),
the texts go through it in batches whose hidden states take at most
`BATCH_BYTES` (each batch reads the streamed trunk once), and in the streamed
runtime the head is read only after the batch has left the trunk and released
before the next one enters it: at 27B widths the head (1.6 GiB in float32) and
a decoder layer (1.4 GiB) are never resident together beside the Hessians
(1.8 GiB for seed 000's seven head weights).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtpforge.checkpoint import Checkpoint, as_checkpoint
from mtpforge.families import detect_family
from mtpforge.quant.lean_gptq import add_to_hessian

if TYPE_CHECKING:
    from mtpforge.reference.model import ReferenceModel
    from mtpforge.reference.streamed import StreamedModel

# float32 hidden states of one batch of texts: 256 MiB = 13K tokens at 27B widths (5,120). Each batch reads the streamed
# trunk once; at 27B that read (seconds) is small beside the trunk's compute over 13K tokens (hours on a CPU)
BATCH_BYTES = 256 << 20


def head_hessians(checkpoint: Path, modules: list[str], token_ids: list[list[int]], *, prefix: str = "mtp", steps: int = 1,
                  runtime: str = "auto", progress: Callable[[str], None] = lambda _: None) -> dict[str, torch.Tensor]:
    """Module path (`mtp.layers.0.mlp.down_proj`) -> GPTQ's normalized Hessian of its input over the calibration tokens.

    Args:
        checkpoint: the checkpoint whose trunk produces the hidden states, with the head still unquantized.
        modules: the head's Linear modules to capture, as checkpoint module paths.
        token_ids: the tokenized calibration texts.
        steps: draft steps to calibrate on (1: the head's input at the first draft position only).
        runtime: the reference runtime for the trunk (`auto`, `memory`, `streamed`: `reference.runtime`).
    """
    from mtpforge.reference.runtime import is_streamed, open_runtime

    model = open_runtime(checkpoint, runtime=runtime)
    hessians: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    done = 0
    with torch.no_grad():
        for batch in _batches(token_ids, as_checkpoint(checkpoint)):
            states = model.hidden_states(batch)  # the trunk first: in the streamed runtime no head is resident yet
            head = model.head
            if head is None:
                raise RuntimeError(f"{checkpoint} has no MTP head")  # the plan chose head weights: a bug, not user input
            hooks = [head.get_submodule(name.removeprefix(prefix + ".")).register_forward_pre_hook(
                partial(_record, name=name, hessians=hessians, counts=counts)) for name in modules]
            try:
                for ids, hidden in zip(batch, states, strict=True):
                    _feed(model, torch.tensor([ids]), hidden, steps)
            finally:
                for hook in hooks:
                    hook.remove()
            del states, head
            if is_streamed(model):
                model.release_head()  # read again for the next batch, after the trunk has run it
            done += len(batch)
            progress(f"head capture: text {done}/{len(token_ids)}")
    return {name: hessians[name].div_(counts[name]) for name in modules}  # normalized in place: no second copy


def _record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *, name: str, hessians: dict[str, torch.Tensor],
            counts: dict[str, int]) -> None:
    """Forward pre-hook: add this call's input to the running Hessian of `name`, in place (`lean_gptq.add_to_hessian`)."""
    x = args[0]
    if name not in hessians:
        hessians[name], counts[name] = torch.zeros(x.shape[-1], x.shape[-1], device=x.device), 0
    counts[name] += add_to_hessian(hessians[name], x)


def _batches(token_ids: list[list[int]], ckpt: Checkpoint) -> list[list[list[int]]]:
    """The texts in order, cut into batches whose float32 hidden states fit `BATCH_BYTES` (at least one text each)."""
    hidden_size = int(detect_family(ckpt.config).text_config(ckpt.config)["hidden_size"])
    batches: list[list[list[int]]] = [[]]
    used = 0
    for ids in token_ids:
        size = len(ids) * hidden_size * 4
        if batches[-1] and used + size > BATCH_BYTES:
            batches.append([])
            used = 0
        batches[-1].append(ids)
        used += size
    return [b for b in batches if b]


def _feed(model: ReferenceModel | StreamedModel, ids: torch.Tensor, hidden: torch.Tensor, steps: int) -> None:
    """Run the head over one text at each draft step, teacher-forced (the hooks see every Linear's input)."""
    assert model.head is not None
    n = ids.shape[1]
    for step in range(min(steps, n - 1)):
        # step s at position t + s reads token t + s + 1 and the previous step's output at t + s - 1 (the trunk's at s = 0)
        count = n - 1 - step
        positions = torch.arange(step, step + count)[None]
        hidden = model.head(model.embed(ids[:, step + 1:]), hidden[:, :count], positions, step=step)

"""The model llm-compressor calibrates, in memory or with its weights on disk (one layer resident at a time).

A 27B base is 54 GB in BF16: more than most hosts hold beside the
activations and Hessians. With `runtime="streamed"` the model is loaded the way
llm-compressor documents for models larger than memory: transformers and
accelerate place every weight on disk (`offload_folder`), compressed-tensors'
offloading takes the model over (`load_offloaded_model`), and llm-compressor's
sequential pipeline brings one decoder layer into memory while it calibrates
it and writes it back after. Host memory then holds one layer, the cached
activations between layers (samples x tokens x hidden x 2 bytes) and the
layer's Hessians, not the model.

Modules whose weights the checkpoint does not have (a vision tower a finetune
dropped, which transformers still builds from config.json) stay in memory:
transformers initializes them there, while an offloaded weight must be read
from a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mtpforge.errors import UsageError

RUNTIMES = ("auto", "memory", "streamed")
# Host bytes per parameter for calibration in memory: the BF16 model, plus llm-compressor's compressed copy at save time
# and the activations and Hessians (measured on the tiny model: ~3.4 B/param at peak; 4 leaves slack).
HOST_BYTES_PER_PARAM = 4


def model_class(base: Path) -> Any:
    """transformers' class for `base`: the VLM class for VLM layouts, so module paths are as in the checkpoint."""
    import transformers

    config = json.loads((base / "config.json").read_text())
    vision_language = "ConditionalGeneration" in (config.get("architectures") or [""])[0]
    return transformers.AutoModelForImageTextToText if vision_language else transformers.AutoModelForCausalLM


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")


def streams(base: Path, runtime: str) -> bool:
    """Whether calibration keeps the weights on disk: `streamed`, or `auto` when the model does not fit in memory.

    Raises:
        UsageError: an unknown `runtime`.
    """
    check_runtime(runtime)
    if runtime != "auto":
        return runtime == "streamed"
    from mtpforge.checkpoint import open_checkpoint
    from mtpforge.reference.runtime import available_host_bytes

    params = sum(math.prod(t.shape) for t in open_checkpoint(base).tensors.values())
    return params * HOST_BYTES_PER_PARAM > available_host_bytes()


def load_for_calibration(base: Path, *, offload: Path | None = None) -> Any:
    """The model as transformers builds it, in BF16: in memory, or (with `offload`, an empty scratch folder that the
    caller removes) with every weight the checkpoint has kept on disk in `offload`."""
    import torch

    auto = model_class(base)
    if offload is None:
        return auto.from_pretrained(base, dtype=torch.bfloat16)
    from compressed_tensors.offload import load_offloaded_model

    _restore_offset_norms_through_offload()
    with load_offloaded_model(auto):
        return auto.from_pretrained(base, dtype=torch.bfloat16, device_map=_disk_map(base, auto), offload_folder=str(offload))


def _restore_offset_norms_through_offload() -> None:
    """llm-compressor 0.14.0.1 calibrates Qwen3.5's offset norms (`x * (1 + w)`) as plain ones and restores them with
    `original.weight.data = ...`, which a weight kept on disk ignores: AWQ's smoothing of the norms would be lost (the
    balance layers scaled, their norms not; measured on the tiny model). Restore through compressed-tensors'
    `update_offload_parameter`, which writes the disk copy (and a weight in memory alike)."""
    from compressed_tensors.offload import update_offload_parameter
    from llmcompressor.modeling.offset_norm import CalibrationOffsetNorm

    def restore(self: Any, original: Any) -> Any:
        update_offload_parameter(original, "weight", (self.weight.data.float() - 1.0).to(self._orig_dtype))
        return original

    CalibrationOffsetNorm.restore = restore


def _disk_map(base: Path, auto: Any) -> dict[str, str]:
    """accelerate's device map: the largest modules whose weights are all in the checkpoint on "disk", those whose weights
    it lacks on "cpu" (accelerate hooks a mapped module with its whole subtree, so the map is cut as high as it can be)."""
    import torch
    import transformers

    from mtpforge.checkpoint import open_checkpoint

    stored = set(open_checkpoint(base).tensors)
    config = transformers.AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = auto.from_config(config)
    device_map: dict[str, str] = {}

    def place(name: str, module: torch.nn.Module) -> None:
        weights = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        found = sum(w in stored for w in weights)
        own = list(module.named_parameters(recurse=False))
        if found == len(weights) or found == 0 or own:
            device_map[name] = "disk" if found == len(weights) else "cpu"
            return
        for child, sub in module.named_children():
            place(f"{name}.{child}" if name else child, sub)

    place("", model)
    return device_map

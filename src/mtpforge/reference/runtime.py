"""Which reference runtime a checkpoint gets: all in memory when it fits, streamed layer by layer when not.

In memory (`reference.model`) is transformers' whole model, float32 on the host: about four bytes per parameter
twice over while loading. Streamed (`reference.streamed`) holds one decoder layer, the MTP head and lm_head.
On a GPU the weights go to the device in bfloat16 straight from the shards (no host copy), every layer kept
resident when they fit in the device's free memory, streamed when not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.errors import UsageError
from mtpforge.families import VISION, detect_family

RUNTIMES = ("auto", "memory", "streamed")
HOST_BYTES_PER_PARAM = 10  # float32 model + the float32 state dict it loads from + slack
DEVICE_HEADROOM = 0.85  # share of a GPU's free memory the resident weights may take (activations need the rest)


def text_params(path: CheckpointLike) -> int:
    """Parameters of the language model and its head (the vision tower is never run)."""
    ckpt = as_checkpoint(path)
    family = detect_family(ckpt.config)
    return sum(math.prod(w.shape) for n, w in ckpt.stored.items() if w.shape and family.group_of(n) != VISION)


def available_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a large number where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 50


def open_runtime(path: CheckpointLike, *, device: str = "cpu", runtime: str = "auto") -> Any:
    """The reference model for `path`: a `ReferenceModel` (in memory) or a `StreamedModel`.

    Raises:
        UsageError: an unknown `runtime`, or `memory` on a GPU (use `auto` or `streamed` there).
    """
    from mtpforge.reference.model import load_reference
    from mtpforge.reference.streamed import open_streamed

    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    params = text_params(path)
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        fits = params * 2 <= free * DEVICE_HEADROOM
        return open_streamed(path, dtype=torch.bfloat16, device=device, keep_layers=fits and runtime != "streamed")
    if runtime == "memory" or (runtime == "auto" and params * HOST_BYTES_PER_PARAM <= available_host_bytes()):
        return load_reference(path, device=device)
    return open_streamed(path, dtype=torch.float32, device=device)


def is_streamed(model: Any) -> bool:
    from mtpforge.reference.streamed import StreamedModel

    return isinstance(model, StreamedModel)

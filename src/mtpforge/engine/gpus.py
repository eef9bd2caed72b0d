"""GPU memory by name: the total a driver reports (`nvidia-smi --query-gpu=memory.total`, in MiB), which is what
vLLM multiplies by `--gpu-memory-utilization` and SGLang by `--mem-fraction-static`.

A card sold as "96 GB" reports 97,887 MiB (95.6 GiB), not 96 x 10^9 bytes (89.4 GiB): planning from the marketing
figure in decimal units undercounts the pool by 6 %, which is the gap seed 002's figures showed. `--gpu-memory`
takes one of these names, or a size.
"""

from __future__ import annotations

from mtpforge.units import parse_size

MIB = 1 << 20
# memory.total as the NVIDIA driver reports it (MiB); the names are what `nvidia-smi -L` prints, shortened.
GPU_MEMORY_MIB = {
    "rtx-pro-6000": 97_887,  # RTX PRO 6000 Blackwell (seed 002's card)
    "l40s": 46_068,  # seed 004's card
    "h100": 81_559,  # H100 80GB HBM3
    "h200": 143_771,
    "a100-80gb": 81_920,
    "a100-40gb": 40_960,
    "rtx-5090": 32_607,
    "rtx-4090": 24_564,
    "rtx-3090": 24_576,
}


def gpu_memory(text: str, *, option: str = "--gpu-memory") -> int:
    """Bytes of GPU memory in `text`: a GPU name above (case-insensitive), or a size (46GiB, 80GB)."""
    key = text.strip().lower().replace(" ", "-").replace("_", "-")
    if key in GPU_MEMORY_MIB:
        return GPU_MEMORY_MIB[key] * MIB
    return parse_size(text, option=option)

"""Activation ranges for FP4 activations (NVFP4 W4A4): the largest |input| each quantized Linear sees on calibration text.

compressed-tensors' NVFP4 input observer is a static min-max over all
calibration tokens; its global scale is `448 * 6 / amax`. The forward runs
through transformers with the whole model in memory (this is the calibrated
part of NVFP4; the weights themselves stay streamed RTN).
"""

from __future__ import annotations

from pathlib import Path

from mtpforge.quant.loading import load_for_calibration


def input_amax(base: Path, modules: set[str], token_ids: list[list[int]]) -> dict[str, float]:
    """Module path -> largest |input| over the tokenized calibration texts (`calibration_data.token_ids`)."""
    import torch

    model = load_for_calibration(base)
    amax: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in modules:
            def record(_module: object, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max()))
            hooks.append(module.register_forward_pre_hook(record))
    missing = modules - {n for n, _ in model.named_modules()}
    if missing:
        raise RuntimeError(f"transformers builds no module {min(missing)}")  # a family-rule bug, not user input
    with torch.no_grad():
        for ids in token_ids:
            model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return amax

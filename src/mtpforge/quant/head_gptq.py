"""GPTQ on one weight, given its input's Hessian: llm-compressor's own `quantize_weight`, driven without a model.

llm-compressor's GPTQModifier runs only inside its calibration pipeline, on
modules transformers builds; the MTP head is not one. Its pieces work on a bare
weight, though: the observer picks the scale and zero point (as the modifier
does, before the column updates), `quantize_weight` runs GPTQ's blocked
column updates against the Hessian `head_capture` gathered, and the result,
already on the observer's grid, is packed by `formats.int_affine` like any
other INT weight.
"""

from __future__ import annotations

from typing import Any

import torch

from mtpforge.quant.observers import observed_qparams, quant_args

DAMPENING = 0.01  # the fraction of the Hessian's mean diagonal added before inverting (llm-compressor's default, seed 004's)
BLOCK = 128  # columns per GPTQ update block (llm-compressor's default)


def gptq_int_tensors(w: torch.Tensor, hessian: torch.Tensor, weights: dict[str, Any], *,
                     dampening: float = DAMPENING) -> tuple[dict[str, torch.Tensor], float]:
    """The stored tensors of the INT weight `w` [out, in] quantized by GPTQ, and GPTQ's loss for it.

    Args:
        hessian: the normalized Hessian of the weight's input [in, in] (`head_capture.head_hessians`); consumed: GPTQ
            dampens and factors it in place (`lean_gptq`: no copy; at 27B widths it is 1.2 GB for down_proj).
        weights: the compressed-tensors `weights` arguments (bits, group, symmetry, observer, actorder).
    """
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    from mtpforge.formats.int_affine import quantize_int
    from mtpforge.quant.lean_gptq import lean_gptq

    args = quant_args(weights)
    scale, zero_point = observed_qparams(w, weights)
    with lean_gptq():  # factored and permuted in place: down_proj's Hessian is 1.1 GiB at 27B widths
        quantized, losses, _ = quantize_weight(w.float()[None], hessian[None], scale[None], zero_point[None], None, args,
                                               blocksize=BLOCK, percdamp=dampening)
    tensors = quantize_int(quantized[0], bits=args.num_bits, group_size=args.group_size, symmetric=args.symmetric,
                           qparams=(scale, zero_point))
    return tensors, float(losses[0])

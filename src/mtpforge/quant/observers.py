"""Weight observers: how each group's scale and zero point are chosen, by llm-compressor's own observers.

`minmax` takes the group's min and max (RTN's and llm-compressor's default);
`mse` searches a shrinking clip range for the smallest quantization error (seed
000's card: "Observer MSE"). Both are llm-compressor's registered weight
observers (`llmcompressor.observers`): the RTN path, GPTQ on the head and
llm-compressor's own AWQ / GPTQ all call the same one, and the output's
`quantization_config` records its name. Not offered: `imatrix_mse` (weights the
error by activation importance gathered by hooks llm-compressor installs during
its own calibration) and `static_minmax` (activations only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtpforge.errors import UsageError

if TYPE_CHECKING:
    import torch

OBSERVERS = {
    "minmax": "each group's min and max (round to nearest; what llm-compressor's data-free path uses)",
    "mse": "the clip range with the smallest squared quantization error, searched per group (seed 000)",
}


def check_observer(name: str) -> None:
    if name not in OBSERVERS:
        raise UsageError(f"unknown observer {name!r}", hint=f"one of {', '.join(OBSERVERS)}")


def quant_args(weights: dict[str, Any]) -> Any:
    """compressed-tensors' `QuantizationArgs` for the `weights` arguments of a plan (observer included)."""
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(**{k: v for k, v in weights.items() if v is not None or k == "group_size"})


def observed_qparams(w: torch.Tensor, weights: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [out, groups] in `w`'s dtype, zero point) of the weight `w` [out, in] by the observer `weights` names."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # llm-compressor logs to stdout at import; --json owns stdout
        from llmcompressor.observers import Observer

    args = quant_args(weights)
    observer = Observer.load_from_registry(args.observer, base_name="weight", args=args)
    observer(w)
    qparams = observer.get_qparams()
    return qparams["scale"], qparams["zero_point"]


def observed_int_tensors(w: torch.Tensor, weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The stored tensors of the INT weight `w`, rounded to nearest on the observer's grid."""
    from mtpforge.formats.int_affine import quantize_int

    return quantize_int(w, bits=weights["num_bits"], group_size=weights["group_size"], symmetric=weights["symmetric"],
                        qparams=observed_qparams(w, weights))

"""`mtpforge quantize`: hybrid-aware quantization that never loses the MTP head.

`plan.py` checks a request and describes the output (pure, no torch);
`apply.py` calibrates what needs text, writes and publishes; `rtn.py` streams
the round-to-nearest weights; `scope.py` chooses what is quantized;
`calibrated.py` and `activations.py` run llm-compressor and transformers.
How each scheme is stored lives in `mtpforge.formats`.
"""

from mtpforge.quant.apply import quantize
from mtpforge.quant.plan import plan_quantize

__all__ = ["plan_quantize", "quantize"]

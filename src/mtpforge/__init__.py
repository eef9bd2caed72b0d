"""mtpforge: quantized hybrid checkpoints whose MTP head keeps drafting.

The public API is one function per verb, with the CLI's options as keyword
arguments; every verb that reads a checkpoint takes a path or an open
`Checkpoint`. Imports are lazy, so `import mtpforge` stays cheap and the core
verbs never import torch:

    >>> import mtpforge
    >>> report = mtpforge.doctor("./Qwen3.6-27B-AWQ")          # headers only
    >>> report.ok, [f.code for f in report.findings]
    >>> mtpforge.graft("./finetune", "Qwen/Qwen3.6-27B", "./finetune-mtp")
    >>> mtpforge.quantize("./finetune-mtp", "./w4a16", scheme="w4a16")   # needs the torch extra
    >>> mtpforge.verify("./w4a16", reference="./finetune-mtp").acceptance
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (one verb, one module, one public function).
_EXPORTS = {
    "open_checkpoint": "mtpforge.checkpoint",
    "Checkpoint": "mtpforge.checkpoint",
    "inspect_checkpoint": "mtpforge.diagnosis.inspection",
    "doctor": "mtpforge.diagnosis.doctor",
    "fix": "mtpforge.surgery.fix",
    "graft": "mtpforge.surgery.graft",
    "strip": "mtpforge.surgery.strip",
    "quantize": "mtpforge.quant",
    "verify": "mtpforge.verify",
    "heal": "mtpforge.heal",
    "plan": "mtpforge.engine.memory",
    "PlanRequest": "mtpforge.engine.memory",
    "launch_line": "mtpforge.engine.launch",
    "ServeOptions": "mtpforge.engine.launch",
    "bench": "mtpforge.bench",
    "BenchOptions": "mtpforge.bench",
    "card": "mtpforge.publish.card",
    "build": "mtpforge.publish.build",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtpforge' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)


class _Api(types.ModuleType):
    """`mtpforge` itself. Importing a subpackage binds it on its parent (`import mtpforge.verify` sets `mtpforge.verify`
    to the package): for `verify`, `bench` and `heal`, whose packages share the verb's name, that would hide the function, so
    an exported name is never rebound to a module. `from mtpforge.verify import X` still works (it reads sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Api

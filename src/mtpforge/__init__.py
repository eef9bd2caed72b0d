"""mtpforge: quantized hybrid checkpoints whose MTP head keeps drafting.

The public API is one function per verb; the core verbs import no torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "doctor", "inspect_checkpoint"]  # noqa: F822 (provided lazily by __getattr__)


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # Lazy, so `import mtpforge` stays cheap and torch-free.
    if name == "doctor":
        from mtpforge.diagnosis.doctor import doctor

        return doctor
    if name == "inspect_checkpoint":
        from mtpforge.diagnosis.inspection import inspect_checkpoint

        return inspect_checkpoint
    raise AttributeError(name)

"""AWQ that resumes per layer: each layer's smoothing kept on disk, and put back at the same point of a restarted run.

In llm-compressor 0.14.0.1, AWQ and its QuantizationModifier run one after the
other (its IndependentPipeline). AWQ's pass is sequential: at the end of each
layer ("subgraph"), every mapping whose balance layers ran in that layer is
smoothed (the smooth layer's weight, and bias, divided by the scales its grid
search chose; the balance layers' weights multiplied by them), and the layer is
run again, unquantized, to feed the next. Only then does the QuantizationModifier
observe every weight, once, in a data-free pass: the scales and zero points come
from the smoothed weights at the end, not per layer.

So what a finished layer leaves is the parameters its mappings changed, which
may lie outside the layer (a mapping may cross layers; the bundled and default
Qwen3.5 mappings do not). Each is saved to `FOLDER/NNNN.safetensors`, written
whole, with the smooth layers handled in its metadata. A restarted run leaves
the handled mappings out of AWQ (no hooks, no grid search) and, at the end of
layer NNNN, puts the saved parameters back: the same point at which AWQ changed
them, so the next layer is fed the same activations and the final data-free
pass observes the same weights (the same scales and zero points). Norm weights
are saved as AWQ sees them (llm-compressor converts Qwen3.5's `1 + weight` norms
for the run and back at its end), and read back inside the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mtpforge.errors import CheckpointError

SMOOTHED = "smoothed"  # metadata: the smooth layers whose mappings a layer's epoch handled (smoothed, or skipped by AWQ)
LAYER_FILE = "[0-9][0-9][0-9][0-9].safetensors"


def awq_folder(resume: Path, mappings: list[tuple[str, list[str]]] | None) -> Path:
    """AWQ's layers for one set of mappings, apart from GPTQ's (the resume folder's key leaves out the method)."""
    key = hashlib.sha256(json.dumps(mappings).encode()).hexdigest()[:12]
    return resume / f"awq-{key}"


def awq_running() -> bool:
    """Whether the session's active modifiers are AWQ's (not the QuantizationModifier's data-free pass after it)."""
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.transform import AWQModifier

    recipe = active_session().lifecycle.recipe
    return any(isinstance(m, AWQModifier) for m in (recipe.modifiers or []))


class KeptSmoothing:
    """The layers an earlier AWQ run finished (read from `folder`), and this run's layers as they finish."""

    def __init__(self, model: torch.nn.Module, folder: Path, progress: Callable[[str], None]) -> None:
        from safetensors import safe_open

        folder.mkdir(parents=True, exist_ok=True)
        self.model, self.folder = model, folder
        self.awq: Any = None  # llm-compressor's AWQModifier, once it resolves its mappings
        self.kept: dict[int, Path] = {}
        for index, file in enumerate(sorted(folder.glob(LAYER_FILE))):
            if file.stem != f"{index:04d}":
                break  # only an unbroken run of layers from the first is reusable
            self.kept[index] = file
        self.done: set[str] = set()
        for file in self.kept.values():
            with safe_open(file, "pt") as f:
                self.done.update(json.loads((f.metadata() or {}).get(SMOOTHED, "[]")))
        if self.kept:
            progress(f"resuming: {len(self.kept)} layers smoothed by an earlier run ({len(self.done)} mappings), "
                     f"read from {folder}")

    @contextlib.contextmanager
    def skipping_done(self) -> Iterator[None]:
        """While llm-compressor runs: AWQ resolves its mappings without those an earlier run handled."""
        from llmcompressor.modifiers.transform import AWQModifier

        original = AWQModifier.__dict__["_set_resolved_mappings"]

        def resolve(awq: Any, model: torch.nn.Module) -> None:
            original(awq, model)
            awq._resolved_mappings = [m for m in awq._resolved_mappings if m.smooth_name not in self.done]
            self.awq = awq

        AWQModifier._set_resolved_mappings = resolve
        try:
            yield
        finally:
            AWQModifier._set_resolved_mappings = original

    def pending(self) -> list[Any]:
        """The mappings AWQ is about to smooth at this layer's end (those whose balance layers ran in it)."""
        if self.awq is None:
            return []
        return [m for m in self.awq._resolved_mappings if m.smooth_name in self.awq._smooth_activation_stats]

    def layer_end(self, index: int, handled: list[Any]) -> None:
        """After AWQ's end of layer `index`: put back what an earlier run saved for it, or save what AWQ just changed."""
        if index in self.kept:
            self._load(self.kept[index])
        else:
            self._save(self.folder / f"{index:04d}.safetensors", handled)

    def _save(self, file: Path, handled: list[Any]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for mapping in handled:
            changed: list[tuple[str, Any, tuple[str, ...]]] = [(mapping.smooth_name, mapping.smooth_layer, ("weight", "bias"))]
            changed += [(name, layer, ("weight",))
                        for name, layer in zip(mapping.balance_names, mapping.balance_layers, strict=True)]
            for name, module, params in changed:
                for p in params:
                    if getattr(module, p, None) is not None:
                        tensors[f"{name}.{p}"] = getattr(module, p).detach().to("cpu").contiguous().clone()
        partial = file.with_suffix(".partial")
        save_file(tensors, str(partial), metadata={SMOOTHED: json.dumps(sorted(m.smooth_name for m in handled))})
        os.replace(partial, file)

    def _load(self, file: Path) -> None:
        from compressed_tensors.utils import update_offload_parameter
        from safetensors.torch import load_file

        for name, tensor in load_file(file).items():
            path, _, param = name.rpartition(".")
            module = self.model.get_submodule(path)
            current = getattr(module, param)
            if current.shape != tensor.shape:
                raise CheckpointError(f"{file}: {name} is {tuple(tensor.shape)}, the model's {tuple(current.shape)}",
                                      hint=f"delete {self.folder} to calibrate from the start")
            update_offload_parameter(module, param, tensor.to(current.dtype))

"""AWQ and GPTQ through llm-compressor, with the hybrid's MTP head carried and declared.

llm-compressor does the calibration, on the whole model in memory or, for a
model larger than memory, with its weights on disk and one layer in memory at a
time (`loading.py`). transformers builds no MTP module, so llm-compressor
neither sees nor ignores the head; it copies the `mtp.*` tensors into its
output when the model came from a local directory. What mtpforge adds: the
scope (the same exact ignore list as RTN), the `re:^mtp.*` entry engines need
to load the head unquantized, `--text-only`, and a CPU fallback
(llm-compressor pins calibration tensors, which needs an accelerator).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mtpforge.errors import UsageError

METHODS = ("rtn", "awq", "gptq")
CALIBRATION_TOKENS = 512  # per sample
OFFLOADED_SHARD = "2GB"  # output shard size when the weights are kept on disk: the save's peak is one shard


def quantize_calibrated(base: Path, staging: Path, *, method: str, weights: dict[str, Any], ignore: list[str],
                        token_ids: list[list[int]], mappings: list[tuple[str, list[str]]] | None = None,
                        dampening: float = 0.01, resume: Path | None = None, scheme: Any = None, runtime: str = "memory",
                        progress: Callable[[str], None] = lambda _: None) -> None:
    """Run llm-compressor `method` on `base` and save the compressed checkpoint to `staging` (which must not exist).

    Args:
        weights: the compressed-tensors `weights` arguments (bits, group, symmetry, observer, actorder).
        ignore: module names and `re:` patterns to leave unquantized (the head's pattern included).
        token_ids: the tokenized calibration texts (`calibration_data.token_ids`).
        mappings: AWQ's smoothing (smooth layer, balance layers), regexes as llm-compressor takes them; None: its
            defaults (input_layernorm -> q/k/v, v -> o, post_attention_layernorm -> gate/up, up -> down).
        dampening: GPTQ's fraction of the Hessian's mean diagonal added before inverting.
        resume: a folder keeping each finished layer (`quant.resume`); layers found there are not redone.
        scheme: the plan's `Scheme` (packs resumed layers).
        runtime: `memory` (the whole model loaded), `streamed` (weights on disk beside `staging`, one layer in memory at a
            time: `quant.loading`), or `auto` (streamed when the model does not fit).
        progress: called with a line per calibrated layer (with the ETA).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    from mtpforge.quant.lean_gptq import lean_gptq
    from mtpforge.quant.loading import load_for_calibration, streams
    from mtpforge.quant.resume import done_modules, load_done, pack_resumed, per_layer, saved_layers
    from mtpforge.quant.spill import activations_on_disk

    _import_llmcompressor()
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier
    from llmcompressor.modifiers.transform.awq.mappings import AWQMapping

    _skip_pinning_without_accelerator()
    tokenizer = AutoTokenizer.from_pretrained(base)
    dataset = Dataset.from_dict({"input_ids": token_ids, "attention_mask": [[1] * len(ids) for ids in token_ids]})
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    saved = saved_layers(resume) if resume is not None and method == "gptq" else {}
    if saved:
        progress(f"resuming: {len(done_modules(saved))} weights of finished layers read from {resume}")
    streamed = streams(base, runtime)
    if method == "gptq":
        # streamed: one module per solve (llm-compressor batches same-shape modules by stacking their Hessians)
        recipe: list[Any] = [GPTQModifier(config_groups=groups, ignore=ignore + done_modules(saved), dampening_frac=dampening,
                                          batched_quantization=None if streamed else "auto")]
    else:
        awq = AWQModifier(mappings=[AWQMapping(smooth, list(balance)) for smooth, balance in mappings]) if mappings \
            else AWQModifier()
        recipe = [awq, QuantizationModifier(config_groups=groups, ignore=ignore)]
    offload = staging.parent / "offload" if streamed else None
    if offload is not None:
        progress(f"weights kept on disk in {offload} and the activations between layers in {offload.with_name('activations')},"
                 " one layer in memory at a time")
    model = load_for_calibration(base, offload=offload)
    load_done(model, saved)
    text = getattr(model.config, "text_config", model.config)
    written = staging.with_name(staging.name + ".resumed") if saved else staging
    # streamed: the activations cached between layers go to disk as well (`quant.spill`), so memory is one layer's worth
    # and GPTQ makes no copies of its Hessians (`quant.lean_gptq`: a 27B layer's peak from 5.3 to 3.8 GiB)
    spill = activations_on_disk(offload.with_name("activations")) if offload is not None else nullcontext()
    lean = lean_gptq() if offload is not None else nullcontext()
    with spill, lean, per_layer(model, text.num_hidden_layers + 1, resume, progress, method=method, mappings=mappings):
        oneshot(model=model, dataset=dataset, recipe=recipe, processor=tokenizer,  # a tokenizer is a processor
                num_calibration_samples=len(token_ids), max_seq_length=max(len(ids) for ids in token_ids),
                output_dir=None if offload else str(written), save_compressed=True)
    if offload is not None:
        # transformers holds a whole shard in memory while writing it and llm-compressor's save defaults to 20 GB shards
        # (one shard at 27B W4): save it ourselves in shards that keep the bound (the layout step can merge them)
        model.save_pretrained(str(written), save_compressed=True, max_shard_size=OFFLOADED_SHARD)
        tokenizer.save_pretrained(str(written))
    if saved:
        pack_resumed(written, saved, scheme=scheme, group=weights["group_size"], weights=weights, ignore=ignore, out=staging)
        shutil.rmtree(written, ignore_errors=True)


def finish(staging: Path, mtp_pattern: str) -> None:
    """Make llm-compressor's output right for engines: the config ignores the head (llm-compressor never saw it as a
    module), and the index's total_size counts the head it copied in (0.14.0.1 leaves the pre-copy figure)."""
    from mtpforge.checkpoint import open_checkpoint

    config_file = staging / "config.json"
    config = json.loads(config_file.read_text())
    ignore = config["quantization_config"].setdefault("ignore", [])
    if mtp_pattern not in ignore:
        ignore.append(mtp_pattern)
    config_file.write_text(json.dumps(config, indent=2))
    index_file = staging / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        ckpt = open_checkpoint(staging)
        index.setdefault("metadata", {})["total_size"] = sum(ckpt.tensors[n].nbytes for n in index["weight_map"]
                                                             if n in ckpt.tensors)
        index_file.write_text(json.dumps(index, indent=2))


def check_method(method: str, mtp: str) -> None:
    """`method` is known and, when calibrated, llm-compressor is installed (a quantized head then gets a pass of its own)."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}", hint=f"one of {', '.join(METHODS)}")
    if method != "rtn":
        _require_llmcompressor(f"--method {method}")


def check_head_request(scheme: Any, mtp: str, mtp_method: str, observer: str) -> None:
    """`mtp_method` and `observer` fit the request: a calibrated head needs a quantized INT head; observers are INT's."""
    from mtpforge.formats.schemes import INT
    from mtpforge.quant.head import HEAD_METHODS
    from mtpforge.quant.observers import check_observer

    check_observer(observer)
    if mtp_method not in HEAD_METHODS:
        raise UsageError(f"unknown MTP method {mtp_method!r}", hint=f"one of {', '.join(HEAD_METHODS)}")
    if mtp_method != "rtn" and mtp != "quantize":
        raise UsageError(f"--mtp-method {mtp_method} calibrates a quantized head; --mtp {mtp} keeps it as stored",
                         hint=f"--mtp quantize --mtp-method {mtp_method}")
    int_only = [f"--mtp-method {mtp_method}"] if mtp_method != "rtn" else []
    int_only += [f"--observer {observer}"] if observer != "minmax" else []
    if int_only and scheme is not None and scheme.kind != INT:
        raise UsageError(f"{' and '.join(int_only)} run INT schemes; {scheme.name} is written data-free",
                         hint="--scheme w4a16-asym (or w4a16, w8a16...), or leave the option out")
    if int_only:
        _require_llmcompressor(int_only[0])


def _require_llmcompressor(what: str) -> None:
    try:
        _import_llmcompressor()
    except ImportError:
        raise UsageError(f"{what} needs llm-compressor", hint="pip install 'mtpforge[calibrate]'") from None


def _import_llmcompressor() -> None:
    """Import llm-compressor with its log on stderr: it adds a stdout sink (and logs) at import, and `--json` owns stdout."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        import llmcompressor  # noqa: F401


def _skip_pinning_without_accelerator() -> None:
    """llm-compressor pins cached activations for faster host-to-device copies; without a GPU there is nothing to copy to."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available() and not getattr(IntermediatesCache, "_mtpforge_cpu", False):
        IntermediatesCache._pin_intermediate = classmethod(lambda cls, intermediate: None)
        IntermediatesCache._mtpforge_cpu = True


def in_temporary(parent: Path) -> Path:
    """A fresh staging path beside `parent` (same file system, so the final move is a rename)."""
    return Path(tempfile.mkdtemp(prefix=f".{parent.name}.", suffix=".calibrating", dir=parent.parent)) / "out"


def remove(path: Path) -> None:
    shutil.rmtree(path.parent if path.parent.name.endswith(".calibrating") else path, ignore_errors=True)


def parse_mappings(specs: tuple[str, ...] | list[Any]) -> list[tuple[str, list[str]]] | None:
    """AWQ mappings from `SMOOTH=BALANCE,BALANCE` strings (the CLI) or [smooth, [balance, ...]] pairs (a recipe); None if none."""
    mappings = []
    for spec in specs:
        if isinstance(spec, str) and "=" in spec:
            smooth, _, balance = spec.partition("=")
            mappings.append((smooth, [b for b in balance.split(",") if b]))
        elif isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], list):
            mappings.append((spec[0], [str(b) for b in spec[1]]))
        else:
            raise UsageError(f"AWQ mapping {spec!r} is not SMOOTH=BALANCE,... (or [smooth, [balance, ...]] in a recipe)",
                             hint="e.g. 're:.*post_attention_layernorm$=re:.*gate_proj$,re:.*up_proj$'")
        if not mappings[-1][1]:
            raise UsageError(f"AWQ mapping {spec!r} names no balance layer", hint="SMOOTH=BALANCE,BALANCE")
    return mappings or None

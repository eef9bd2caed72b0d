"""AWQ and GPTQ through llm-compressor, with the hybrid's MTP head carried and declared.

llm-compressor does the calibration (it needs the whole model in memory: this
path does not stream). transformers builds no MTP module, so llm-compressor
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
from pathlib import Path
from typing import Any

from mtpforge.errors import UsageError

METHODS = ("rtn", "awq", "gptq")
CALIBRATION_TOKENS = 512  # per sample


def quantize_calibrated(base: Path, staging: Path, *, method: str, weights: dict[str, Any], ignore: list[str],
                        texts: list[str], max_samples: int, seq_len: int = CALIBRATION_TOKENS) -> None:
    """Run llm-compressor `method` on `base` and save the compressed checkpoint to `staging` (which must not exist).

    Args:
        weights: the compressed-tensors `weights` arguments (bits, group, symmetry, observer, actorder).
        ignore: module names and `re:` patterns to leave unquantized (the head's pattern included).
        texts: calibration texts; the first `max_samples` are used, each cut to `seq_len` tokens.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    _import_llmcompressor()
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    _skip_pinning_without_accelerator()
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = [tokenizer(t, truncation=True, max_length=seq_len)["input_ids"] for t in texts[:max_samples]]
    dataset = Dataset.from_dict({"input_ids": encoded, "attention_mask": [[1] * len(ids) for ids in encoded]})
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    if method == "gptq":
        recipe: list[Any] = [GPTQModifier(config_groups=groups, ignore=ignore, dampening_frac=0.01)]
    else:
        recipe = [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=ignore)]
    model = load_for_calibration(base)
    oneshot(model=model, dataset=dataset, recipe=recipe, processor=tokenizer,  # a tokenizer is a processor
            num_calibration_samples=len(encoded), max_seq_length=seq_len, output_dir=str(staging), save_compressed=True)


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


def calibration_texts(path: str | None) -> list[str]:
    """The user's texts (JSON list or one per line), or the bundled prompt set."""
    from mtpforge.prompts import load_prompts

    return load_prompts(path)


def check_method(method: str, mtp: str) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}", hint=f"one of {', '.join(METHODS)}")
    if method != "rtn" and mtp == "quantize":
        raise UsageError(f"--mtp quantize runs with --method rtn only: {method} cannot calibrate the head, "
                         "which transformers does not build", hint="keep the head BF16 (--mtp keep), or use --method rtn")
    if method != "rtn":
        try:
            _import_llmcompressor()
        except ImportError:
            raise UsageError(f"--method {method} needs llm-compressor", hint="pip install 'mtpforge[calibrate]'") from None


def _import_llmcompressor() -> None:
    """Import llm-compressor with its log on stderr: it adds a stdout sink (and logs) at import, and `--json` owns stdout."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        import llmcompressor  # noqa: F401


def load_for_calibration(base: Path) -> Any:
    """The model as transformers builds it, module paths as in the checkpoint (the VLM class for VLM layouts)."""
    import torch
    import transformers

    config = json.loads((base / "config.json").read_text())
    vision_language = "ConditionalGeneration" in (config.get("architectures") or [""])[0]
    auto = transformers.AutoModelForImageTextToText if vision_language else transformers.AutoModelForCausalLM
    return auto.from_pretrained(base, dtype=torch.bfloat16)


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

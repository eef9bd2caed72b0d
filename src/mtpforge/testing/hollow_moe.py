"""A hollow replica of the largest public MTP MoE export: nvidia/Qwen3.5-397B-A17B-NVFP4.

The real `config.json` and `hf_quant_config.json` (../shared/reference/public-configs/, as kept by
ai-dynamo/aiconfigurator), the real tensor names of a per-expert ModelOpt export (512 routed experts in
each of 60 layers and in the MTP layer, `model.language_model.*`, `model.visual.*`, `mtp.*`), the real
packed tensors and shapes of ModelOpt NVFP4 (formats/schemes.py: four stored tensors per quantized
weight), split into 51 shards with an index: about 371,000 tensors, as the
issue measured on the public index. Which Linear weights are stored NVFP4 is what the quantization config
says of each module (an engine's reading), except the routers, which no engine quantizes. Every tensor
is a hole: the shards hold headers and nothing else on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from mtpforge.checkpoint.quant_config import parse_modelopt
from mtpforge.checkpoint.writer import TensorData
from mtpforge.families import FAMILIES
from mtpforge.families.base import LINEAR
from mtpforge.formats.schemes import SCHEMES
from mtpforge.testing.factory import write_shards, write_tokenizer_files

QWEN35_397B_NVFP4 = "nvidia--Qwen3.5-397B-A17B-NVFP4"
NVFP4_GROUP = 16


def public_config(name: str, reference: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`config.json` and (if any) `hf_quant_config.json` of a public checkpoint under `reference/public-configs`."""
    folder = reference / "public-configs" / name
    config = json.loads((folder / "config.json").read_text())
    hf_quant = folder / "hf_quant_config.json"
    return config, json.loads(hf_quant.read_text()) if hf_quant.exists() else None


def hollow_tensors(config: dict[str, Any], hf_quant: dict[str, Any],
                   stored_as: Callable[[str, bool], bool] | None = None) -> list[TensorData]:
    """Every stored tensor of a per-expert ModelOpt NVFP4 export of `config`, without data.

    Args:
        stored_as: (module, declared quantized) -> stored quantized; default: as declared. Tests pass one
            that disagrees with the config for some modules, to plant a defect.
    """
    family = FAMILIES[config["model_type"]]
    qc = parse_modelopt(hf_quant, "hf_quant_config.json")
    scheme = SCHEMES["modelopt-nvfp4"]
    out: list[TensorData] = []
    for name, spec in family.expected(config, fused_experts=False).items():
        declared = spec.kind == LINEAR and not spec.keep_high_precision and qc.scheme_for(spec.module) is not None
        quantized = stored_as(spec.module, declared) if stored_as else declared
        if not quantized:
            out.append(TensorData(name, spec.dtype, spec.shape))
            continue
        rows, cols = spec.shape
        out += [TensorData(f"{spec.module}.{key}", dtype, shape)
                for key, (dtype, shape) in scheme.companions(rows, cols, NVFP4_GROUP).items()]
    return out


def make_hollow_moe(out: Path, reference: Path, *, name: str = QWEN35_397B_NVFP4, shards: int = 51,
                    stored_as: Callable[[str, bool], bool] | None = None) -> Path:
    """Write the hollow replica of the public export `name` into `out` (which must not exist) and return `out`."""
    config, hf_quant = public_config(name, reference)
    if hf_quant is None:
        raise ValueError(f"{name}: no hf_quant_config.json, not a ModelOpt export")
    out.mkdir(parents=True)
    write_shards(out, hollow_tensors(config, hf_quant, stored_as), shards=shards, index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2))
    write_tokenizer_files(out, vocab_size=16)
    return out


def shared_reference() -> Path:
    """`../shared/reference` beside the repository, where the public configs are kept."""
    here = Path(str(resources.files("mtpforge")))
    return here.parents[2] / "shared" / "reference"

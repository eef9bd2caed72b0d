"""A checkpoint directory: config, index, every shard's header, quantization
configs and tokenizer files, read once; tensor bytes read only on request.

Opening never fails on a broken shard: its `HeaderError` is kept in
`header_errors`, so `doctor` can report it next to every other finding. It
does fail (CheckpointError) when there is nothing to diagnose: no directory, no
`config.json`, an unreadable index, or paths that leave the directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Union

import numpy as np

from mtpforge.checkpoint import quant_config as qc
from mtpforge.checkpoint.header import HeaderError, ShardHeader, TensorInfo, read_header
from mtpforge.checkpoint.index import Index, check_inside, read_index, read_json
from mtpforge.errors import CheckpointError
from mtpforge.formats.stored import StoredTensor, StoredWeight, resolve
from mtpforge.formats.values import decode

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
HF_QUANT_CONFIG = "hf_quant_config.json"


@dataclass
class Checkpoint:
    """Everything mtpforge knows about a checkpoint directory without reading tensor data."""

    root: Path
    config: dict[str, Any]
    index: Index | None
    headers: dict[str, ShardHeader]
    header_errors: dict[str, HeaderError]
    quant_configs: list[qc.QuantConfig] = field(default_factory=list)
    quant_errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)
    foreign_quant_method: str | None = None
    files: frozenset[str] = frozenset()

    def __fspath__(self) -> str:  # an open checkpoint stands wherever a path to it would (Path(ckpt), open(...))
        return str(self.root)

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """The tensors an engine loads: every tensor of the shards the index references
        (vLLM reads whole files), or of every shard when there is no index."""
        return {name: t for h in self._loaded_headers(True) for name, t in h.tensors.items()}

    @cached_property
    def unindexed(self) -> dict[str, TensorInfo]:
        """Tensors in `.safetensors` files of the directory that the index does not reference."""
        return {name: t for h in self._loaded_headers(False) for name, t in h.tensors.items()}

    def _loaded_headers(self, loaded: bool) -> list[ShardHeader]:
        referenced = set(self.index.weight_map.values()) if self.index is not None else set(self.headers)
        return [h for name, h in sorted(self.headers.items()) if (name in referenced) == loaded]

    @cached_property
    def stored(self) -> dict[str, StoredWeight]:
        """Loaded tensors grouped into logical weights (quantized ones with their companions)."""
        return resolve(self.tensors, self.read_ints)

    def read(self, info: StoredTensor, *, max_bytes: int = 1 << 26) -> np.ndarray:
        """Read one tensor's data (bfloat16 widened to float32); refuses tensors over `max_bytes`."""
        if info.nbytes > max_bytes:
            raise CheckpointError(f"{info.shard}: tensor {info.name!r} is {info.nbytes} bytes, "
                                  f"over the {max_bytes}-byte read limit")
        with open(self.root / info.shard, "rb") as f:
            f.seek(info.begin)
            raw = f.read(info.nbytes)
        if len(raw) != info.nbytes:
            raise CheckpointError(f"{info.shard}: tensor {info.name!r} is cut short", hint="re-download this shard")
        return decode(info.dtype, info.shape, raw)

    def read_ints(self, info: StoredTensor) -> list[int]:
        """Read a small integer tensor as a list of Python ints."""
        return [int(x) for x in self.read(info, max_bytes=1024).reshape(-1)]

    @property
    def has_tokenizer(self) -> bool:
        return any(name in self.files for name in TOKENIZER_FILES)

    @cached_property
    def chat_template(self) -> str | None:
        """The chat template shipped as `chat_template.jinja` or inside `tokenizer_config.json`."""
        if "chat_template.jinja" in self.files:
            return (self.root / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
        if "tokenizer_config.json" in self.files:
            try:
                template = read_json(self.root / "tokenizer_config.json", self.root).get("chat_template")
            except (CheckpointError, AttributeError):
                return None
            return template if isinstance(template, str) and template else None
        return None


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open the checkpoint directory at `path`: config, index, headers and quantization configs.

    Args:
        path: a Hugging Face-layout checkpoint directory.

    Returns:
        The checkpoint; shards whose headers are broken are listed in `header_errors`.

    Raises:
        CheckpointError: `path` is not a directory, lacks a readable `config.json`,
            has an unreadable index, or points outside itself.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory", hint="pass the folder that holds config.json")
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root}: no config.json", hint="pass the folder that holds config.json and the shards")
    config = read_json(root / "config.json", root)
    if not isinstance(config, dict):
        raise CheckpointError(f"{root / 'config.json'}: not a JSON object")
    index = read_index(root)
    files = frozenset(p.name for p in root.iterdir() if p.is_file())
    shard_names = {n for n in files if n.endswith(".safetensors")}
    if index is not None:
        shard_names |= {s for s in index.shard_names if (root / s).exists()}
    if not shard_names and index is None:
        raise CheckpointError(f"{root}: no .safetensors file and no {'model.safetensors.index.json'}")
    headers, errors = {}, {}
    for name in sorted(shard_names):
        shard = check_inside(root, name, what="shard")
        try:
            headers[name] = read_header(shard)
        except HeaderError as e:
            errors[name] = e
    ckpt = Checkpoint(root, config, index, headers, errors, files=files)
    _read_quant_configs(ckpt)
    return ckpt


def _read_quant_configs(ckpt: Checkpoint) -> None:
    doc = ckpt.config.get("quantization_config")
    if doc is not None:
        method = doc.get("quant_method") if isinstance(doc, dict) else None
        parser = {qc.CT_METHOD: qc.parse_ct, qc.MODELOPT_METHOD: qc.parse_modelopt}.get(method or "")
        if parser is not None:
            _try(ckpt, "config.json", lambda: parser(doc, "config.json quantization_config"))
        elif method in qc.FOREIGN_METHODS:
            ckpt.foreign_quant_method = method
        else:
            ckpt.quant_errors.append(("config.json", f"config.json quantization_config: unknown quant_method {method!r}"))
    if HF_QUANT_CONFIG in ckpt.files:
        try:
            doc = read_json(ckpt.root / HF_QUANT_CONFIG, ckpt.root)
        except CheckpointError as e:
            ckpt.quant_errors.append((HF_QUANT_CONFIG, str(e)))
            return
        _try(ckpt, HF_QUANT_CONFIG, lambda: qc.parse_modelopt(doc, HF_QUANT_CONFIG))


def _try(ckpt: Checkpoint, file: str, parse: Any) -> None:
    try:
        ckpt.quant_configs.append(parse())
    except qc.QuantConfigInvalid as e:
        ckpt.quant_errors.append((file, str(e)))


CheckpointLike = Union[str, "os.PathLike[str]", Checkpoint]


def as_checkpoint(source: CheckpointLike) -> Checkpoint:
    """`source` itself when it is an open `Checkpoint`, else the checkpoint directory it names, opened.

    Every verb takes either, so a caller that already opened a checkpoint (card, build, plan) does not read
    its headers again.
    """
    return source if isinstance(source, Checkpoint) else open_checkpoint(source)

"""A checkpoint directory: config, index, every shard's header, quantization
configs and tokenizer files, read once; tensor bytes read only on request.

Opening never fails on a broken shard: its `HeaderError` is kept in
`header_errors`, so `doctor` can report it next to every other finding. It
does fail (CheckpointError) when there is nothing to diagnose: no directory, no
`config.json`, an unreadable index, or shards that leave the directory or are
not regular files. Any other file that is a symlink leaving the directory, a
FIFO, a device or a socket is never read: it is left out of `files` and listed
in `unsafe_files` (doctor reports it; writers must not copy it).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Union

import numpy as np

from mtpforge.checkpoint import paths
from mtpforge.checkpoint import quant_config as qc
from mtpforge.checkpoint.header import HeaderError, ShardHeader, TensorInfo, read_header
from mtpforge.checkpoint.index import Index, read_index, read_json
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
    files: frozenset[str] = frozenset()  # the regular files at the top of the directory, safe to read and copy
    unsafe_files: dict[str, str] = field(default_factory=dict)  # name -> why it is never read nor copied

    def __fspath__(self) -> str:  # an open checkpoint stands wherever a path to it would (Path(ckpt), open(...))
        return str(self.root)

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """The tensors an engine loads: every tensor of the shards the index references
        (vLLM reads whole files), or of every shard when there is no index."""
        return _merged(self._loaded_headers(True))

    @cached_property
    def unindexed(self) -> dict[str, TensorInfo]:
        """Tensors in `.safetensors` files of the directory that the index does not reference."""
        return _merged(self._loaded_headers(False))

    @cached_property
    def duplicated(self) -> dict[str, tuple[str, ...]]:
        """Tensors that more than one loaded shard holds, with those shards: engines load one copy arbitrarily."""
        loaded = self._loaded_shards(True)
        if sum(len(self.headers[s].tensors) for s in loaded) == len(self.tensors):
            return {}  # every name once: the merge kept them all (the common case, in O(shards))
        seen: dict[str, list[str]] = {}
        for shard in loaded:
            for name in self.headers[shard].tensors:
                seen.setdefault(name, []).append(shard)
        return {name: tuple(shards) for name, shards in sorted(seen.items()) if len(shards) > 1}

    @cached_property
    def unlisted(self) -> dict[str, str]:
        """Tensors of indexed shards that `weight_map` does not list (tensor -> shard): vLLM loads them anyway."""
        if self.index is None:
            return {}
        wm = self.index.weight_map  # a dict: set.difference looks each shard name up in it, in C
        return {name: shard for shard in self._loaded_shards(True)
                for name in sorted(set(self.headers[shard].tensors).difference(wm))}

    def _loaded_headers(self, loaded: bool) -> list[ShardHeader]:
        return [self.headers[name] for name in self._loaded_shards(loaded)]

    def _loaded_shards(self, loaded: bool) -> list[str]:
        referenced = self._referenced
        return [name for name in sorted(self.headers) if (name in referenced) == loaded]

    @cached_property
    def _referenced(self) -> frozenset[str]:
        """The shards the index references (every shard without an index): read once, not per question."""
        return frozenset(self.index.weight_map.values()) if self.index is not None else frozenset(self.headers)

    @cached_property
    def stored(self) -> dict[str, StoredWeight]:
        """Loaded tensors grouped into logical weights (quantized ones with their companions)."""
        mlx = [c for c in self.quant_configs if c.method == qc.MLX_METHOD]
        # mlx-lm records per-module bits (its 8-bit routers) by module path: a packed shape alone leaves them open
        own = {m: s.weight_bits for m in mlx[0].overrides if (s := mlx[0].scheme_for(m)) is not None} if mlx else None
        return resolve(self.tensors, self.read_ints, mlx_bits=mlx[0].schemes[0].weight_bits if mlx else None,
                       mlx_module_bits=own)

    def read(self, info: StoredTensor, *, max_bytes: int = 1 << 26) -> np.ndarray:
        """Read one tensor's data (bfloat16 widened to float32); refuses tensors over `max_bytes`."""
        if info.nbytes > max_bytes:
            raise CheckpointError(f"{info.shard}: tensor {info.name!r} is {info.nbytes} bytes, "
                                  f"over the {max_bytes}-byte read limit")
        try:
            with paths.open_regular(paths.resolve(self.root, info.shard, what="shard")) as f:
                f.seek(info.begin)
                raw = f.read(info.nbytes)
        except OSError as e:
            raise CheckpointError(f"{self.root / info.shard}: cannot read: {e.strerror or e}",
                                  hint="check the file's permissions") from e
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
            return paths.read_text(self.root, "chat_template.jinja")
        if "tokenizer_config.json" in self.files:
            try:
                template = read_json(self.root / "tokenizer_config.json", self.root).get("chat_template")
            except (CheckpointError, AttributeError):
                return None
            return template if isinstance(template, str) and template else None
        return None


def _merged(headers: list[ShardHeader]) -> dict[str, TensorInfo]:
    """Every tensor of `headers`, a later shard's entry winning a name two hold (dict.update, in C)."""
    out: dict[str, TensorInfo] = {}
    for header in headers:
        out.update(header.tensors)
    return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """CPython's cycle collector paused while a large index is read and diagnosed, then restored.

    Reading a 400K-tensor index builds millions of tuples and dicts, none in a reference cycle; each full
    collection walks every live one again, and the allocations trigger dozens: a third of doctor's time
    on the 397B NVFP4 index (bench/doctor_scale.py). Cycles made meanwhile are collected once it resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    if not paths.exists(root, "config.json"):
        raise CheckpointError(f"{root}: no config.json", hint="pass the folder that holds config.json and the shards")
    config = read_json(root / "config.json", root)
    if not isinstance(config, dict):
        raise CheckpointError(f"{root / 'config.json'}: not a JSON object")
    index = read_index(root)
    files, unsafe = _list_files(root)
    for name in sorted(n for n in unsafe if n.endswith(".safetensors")):
        paths.resolve(root, name, what="shard")  # a shard no engine can load safely: refused, with the reason
    shard_names = {n for n in files if n.endswith(".safetensors")}
    if index is not None:
        shard_names |= {s for s in index.shard_names if paths.exists(root, s)}
    if not shard_names and index is None:
        raise CheckpointError(f"{root}: no .safetensors file and no {'model.safetensors.index.json'}")
    headers, errors = {}, {}
    with gc_paused():
        for name in sorted(shard_names):
            shard = paths.resolve(root, name, what="shard")
            try:
                headers[name] = read_header(shard, name)
            except HeaderError as e:
                errors[name] = e
    ckpt = Checkpoint(root, config, index, headers, errors, files=files, unsafe_files=unsafe)
    _read_quant_configs(ckpt)
    return ckpt


def _list_files(root: Path) -> tuple[frozenset[str], dict[str, str]]:
    """The regular files at the top of `root`, and the names that must never be read (with the reason)."""
    files, unsafe = set(), {}
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise CheckpointError(f"{root}: cannot list: {e.strerror}", hint="check the directory's permissions") from e
    for name in names:
        reason = paths.unsafe_reason(root, name)
        if reason is None:
            if os.path.isfile(root / name):
                files.add(name)
        elif not (os.path.isdir(root / name) and not os.path.islink(root / name)):  # plain subfolders are not read
            unsafe[name] = reason
    return frozenset(files), unsafe


def _read_quant_configs(ckpt: Checkpoint) -> None:
    key = "quantization_config" if "quantization_config" in ckpt.config else "quantization"  # MLX writes `quantization`
    doc = ckpt.config.get(key)
    if doc is not None:
        if qc.method_of(doc) in qc.FOREIGN_METHODS:
            ckpt.foreign_quant_method = qc.method_of(doc)
        else:
            _try(ckpt, "config.json", lambda: qc.parse(doc, f"config.json {key}"))
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

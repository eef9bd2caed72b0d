"""A pure description of an output checkpoint, built and validated before any byte is written.

A plan says which shards of the input are linked unchanged, which new shards
are written and where each of their tensors' bytes come from, and the JSON
files of the output. `--dry-run` prints it; `apply_plan` carries it out.

Every name a plan writes is a plain file name of the output directory (`check_file_name`): no `/`, no `..`,
no NUL, not absolute; a name the user chooses (`--shard-name`) is moreover not hidden and has its suffix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.errors import UsageError
from mtpforge.units import human


class ByteSource(Protocol):
    """Bytes [begin, end) that stream in chunks (surgery.sources.FileRange, Computed; checkpoint.http.HttpRange)."""

    @property
    def begin(self) -> int: ...

    @property
    def end(self) -> int: ...

    def describe(self) -> str: ...

    def chunks(self, size: int = ...) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class TensorCopy:
    """One tensor of a new shard and the source of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: ByteSource

    @property
    def nbytes(self) -> int:
        return self.source.end - self.source.begin


@dataclass(frozen=True)
class NewShard:
    """A shard file the plan writes, tensors in order."""

    name: str
    tensors: tuple[TensorCopy, ...]
    metadata: tuple[tuple[str, str], ...] = (("format", "pt"),)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class WritePlan:
    """What an output checkpoint will hold, and why."""

    verb: str
    source_dir: Path
    linked: tuple[str, ...]  # files of source_dir reused unchanged (hard link, else copy)
    written: tuple[NewShard, ...]
    json_files: dict[str, Any]  # name -> document written fresh
    linked_bytes: int
    actions: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def written_bytes(self) -> int:
        return sum(s.nbytes for s in self.written)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": f"mtpforge.{self.verb}/1",
            "source": str(self.source_dir),
            "actions": list(self.actions),
            "warnings": list(self.warnings),
            "linked": list(self.linked),
            "written": [{"name": s.name, "tensors": len(s.tensors), "bytes": s.nbytes} for s in self.written],
            "json_files": sorted(self.json_files),
            "written_bytes": self.written_bytes,
            "linked_bytes": self.linked_bytes,
        }

    def render(self) -> str:
        lines = [f"{self.verb} plan for {self.source_dir}:"]
        lines += [f"  - {a}" for a in self.actions]
        lines += [f"  warning: {w}" for w in self.warnings]
        for shard in self.written:
            lines.append(f"  write {shard.name}: {len(shard.tensors)} tensors, {human(shard.nbytes)}")
        shards = [n for n in self.linked if n.endswith(".safetensors")]
        others = len(self.linked) - len(shards)
        lines.append(f"  link {len(shards)} unchanged shard(s) ({human(self.linked_bytes)}) and {others} other file(s)")
        lines.append(f"  rewrite {', '.join(sorted(self.json_files))}")
        return "\n".join(lines)


def check_file_name(name: str, *, option: str | None = None, suffix: str | None = None) -> str:
    """`name` if it is a plain file name inside the output directory, else a UsageError (exit 2).

    With `option` (a name the user chose), a hidden name is refused too, and a name without `suffix`.
    """
    what = f"{option} {name!r}" if option else f"the output file name {name!r}"
    plain = bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name
    if not plain or (option is not None and name.startswith(".")):
        raise UsageError(f"{what} is not a plain file name: it must name a new file directly inside --out",
                         hint="pass a bare file name such as mtp.safetensors (no directory, no leading dot)")
    if suffix and not name.endswith(suffix):
        raise UsageError(f"{what} does not end in {suffix}", hint=f"pass a name such as mtp{suffix}")
    return name


def index_document(weight_map: dict[str, str], sizes: dict[str, int]) -> dict[str, Any]:
    """`model.safetensors.index.json` for `weight_map`; total_size is the sum of tensor bytes."""
    return {"metadata": {"total_size": sum(sizes[name] for name in weight_map)}, "weight_map": dict(sorted(weight_map.items()))}


__all__ = ["INDEX_NAME", "ByteSource", "NewShard", "TensorCopy", "WritePlan", "check_file_name", "index_document"]

"""Shared fixtures: checkpoint builders, shard surgery for breaking them, and a CLI runner."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtpforge.checkpoint.header import read_header
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.cli import main
from mtpforge.testing.factory import make_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `mtpforge ARGS` through the real entry point; return exit code, stdout, stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        else:  # main always exits
            raise AssertionError("main() returned without exiting")
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Path]:
    """`make(name, **kwargs)` builds a tiny checkpoint under tmp_path (see make_checkpoint)."""

    def build(name: str = "ckpt", family: str = "qwen3_5", **kwargs: Any) -> Path:
        return make_checkpoint(tmp_path / name, family, **kwargs)

    return build


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    """Load the JSON at `path`, let `change` mutate it, write it back."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def read_all(shard: Path) -> list[TensorData]:
    """Every tensor of a shard, with its bytes."""
    header = read_header(shard)
    raw = shard.read_bytes()
    return [TensorData(t.name, t.dtype, t.shape, raw[t.begin : t.end])
            for t in sorted(header.tensors.values(), key=lambda t: t.begin)]


def rewrite_shard(shard: Path, change: Callable[[list[TensorData]], list[TensorData]]) -> None:
    """Rewrite a shard with `change` applied to its tensor list (the index is left alone)."""
    write_safetensors(shard, change(read_all(shard)), {"format": "pt"})


def shard_of(ckpt: Path, tensor: str) -> Path:
    """The shard file that holds `tensor`."""
    for shard in sorted(ckpt.glob("*.safetensors")):
        if tensor in read_header(shard).tensors:
            return shard
    raise KeyError(tensor)


def codes(report_json: dict[str, Any]) -> set[str]:
    return {f["code"] for f in report_json["findings"]}


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `where` with `options` (needs root; the test is skipped where mounting is not allowed)."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fingerprint(*dirs: Path) -> dict[str, tuple[int, str, int, int]]:
    """Size, content hash, inode and mtime of every file under `dirs` (not following links)."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p)] = (st.st_size, digest, st.st_ino, st.st_mtime_ns)
    return out


def leftovers(parent: Path, out: Path) -> list[str]:
    """Anything this run may have left beside or at OUT: the output, its staging, lock or temporary names."""
    return sorted(p.name for p in parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


@pytest.fixture
def pair(make: Callable[..., Path]) -> tuple[Path, Path]:
    """A head-less target and the base whose head it can take."""
    return make("target", mtp=False), make("base")

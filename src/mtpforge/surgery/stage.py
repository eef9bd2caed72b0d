"""Carry out a `WritePlan`: never touch the input, never leave half an output.

Everything is written into `.<out>.partial/` beside the destination: unchanged
files are hard-linked (copied where the filesystem refuses links), new shards
are streamed chunk by chunk (memory stays bounded by one chunk), then every
file is fsynced, the staged checkpoint is re-read, and one `rename` publishes
it. A failure, a full disk, SIGTERM or Ctrl-C removes the staging directory;
a SIGKILL leaves only the staging directory, which the next run removes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.writer import TensorData, encode_header
from mtpforge.errors import CheckpointError, MtpforgeError, UsageError
from mtpforge.surgery.progress import Progress
from mtpforge.surgery.sources import FileRange
from mtpforge.surgery.writeplan import NewShard, WritePlan


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def apply_plan(plan: WritePlan, out: Path, *, overwrite: bool = False) -> Path:
    """Write the checkpoint `plan` describes to `out`, atomically.

    Raises:
        UsageError: `out` exists (without `overwrite`) or lies inside the input.
        MtpforgeError: writing failed (disk full, a source changed); nothing is left at `out`.
    """
    out = Path(os.path.abspath(out))
    check_destination(plan.source_dir, out, overwrite=overwrite)
    staging = staging_dir(out)
    if staging.exists():
        shutil.rmtree(staging)  # left by a run that was killed
    staging.mkdir(parents=True)
    try:
        with _signals_as_exit():
            for name in plan.linked:
                _link_or_copy(plan.source_dir / name, staging / name)
            progress = Progress(f"{plan.verb} -> {out.name}", plan.written_bytes)
            for shard in plan.written:
                _write_shard(staging / shard.name, shard, progress)
            progress.close()
            for name, doc in plan.json_files.items():
                _write_json(staging / name, doc)
            _fsync_dir(staging)
            header_errors = open_checkpoint(staging).header_errors
            if header_errors:  # a bug if it ever happens: refuse to publish
                raise CheckpointError(f"the staged output does not read back: {next(iter(header_errors.values()))}")
            _publish(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise _as_user_error(e, out) from e
        raise
    return out


def check_destination(source: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse an output that exists (without `overwrite`) or that would overlap the input."""
    src, dst = os.path.realpath(source), os.path.realpath(out)
    if dst == src or dst.startswith(src + os.sep) or src.startswith(dst + os.sep):
        raise UsageError(f"--out {out} overlaps the input {source}",
                         hint="write the output to a new directory; inputs are never modified")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} already exists", hint="choose a new directory, or pass --overwrite to replace it")


def _publish(staging: Path, out: Path) -> None:
    if out.exists():  # --overwrite: swap, then drop the old output
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
    _fsync_dir(out.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)


def _write_shard(path: Path, shard: NewShard, progress: Progress) -> None:
    header = encode_header([TensorData(t.name, t.dtype, t.shape) for t in shard.tensors], dict(shard.metadata))
    with open(path, "wb") as f:
        f.write(header)
        for tensor in shard.tensors:
            if isinstance(tensor.source, FileRange):
                f.flush()
                written = tensor.source.copy_into(f.fileno())
            else:
                written = 0
                for chunk in tensor.source.chunks():
                    f.write(chunk)
                    written += len(chunk)
            progress.advance(written, tensor.name)
            if written != tensor.nbytes:
                raise CheckpointError(f"{tensor.source.describe()}: {written} bytes read for {tensor.name}, "
                                      f"{tensor.nbytes} expected")
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, doc: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write one file whole or not at all: a hidden temporary beside it, fsync, rename."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _as_user_error(e, out) from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_user_error(e: OSError, out: Path) -> MtpforgeError:
    if e.errno == errno.ENOSPC:
        return MtpforgeError(f"no space left on the device of {out.parent}; nothing was written to {out}",
                             hint="free space or choose another --out; the input is untouched")
    return MtpforgeError(f"writing {out} failed: {e.strerror or e} ({e.filename or out}); nothing was written to {out}",
                         hint="the input is untouched")


@contextmanager
def _signals_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that cleanup runs, as it does for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Carry out a `WritePlan`: never touch an input, never leave half an output.

Invariants:

- Before anything is written, every name the plan writes is a plain file name (no `/`, `..`, NUL) and
  appears once, and the output neither is, lies inside nor contains any input directory: the target and
  every directory a planned byte is read from (`publish.check_destination`).
- The whole stage and publish runs under the output's lock (`publish.out_lock`).
- Everything is written into `.<out>.partial/` beside the destination. A stale one (a directory, a file or a
  symlink left by a killed run) is removed without following links. Unchanged files, each resolved to a
  regular file inside the input (`checkpoint.paths`), are hard-linked (copied where a link is impossible);
  every other file is created new with O_CREAT|O_EXCL|O_NOFOLLOW, so a write never opens an existing path
  and can never reach an input through a link.
- Every file is fsynced; then the staged checkpoint is validated as the verbs will read it (headers, config,
  family rules, every JSON file) and only then published in one atomic step (`publish.publish`).
- A failure, a full disk, SIGTERM or Ctrl-C removes the staging directory and leaves nothing at `out`; a
  SIGKILL leaves only the staging directory, which the next run removes. Every OSError becomes an exit-3
  error naming the path.
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

from mtpforge.checkpoint import open_checkpoint, paths
from mtpforge.checkpoint.writer import TensorData, encode_header
from mtpforge.errors import CheckpointError, MtpforgeError, UsageError
from mtpforge.families import detect_family, expected_inventory
from mtpforge.surgery.progress import Progress
from mtpforge.surgery.publish import (
    as_user_error,
    check_destination,
    clear_stale,
    fsync_dir,
    out_lock,
    publish,
    remove_path,
    staging_dir,
)
from mtpforge.surgery.sources import FileRange
from mtpforge.surgery.writeplan import NewShard, WritePlan, check_file_name

__all__ = ["apply_plan", "check_destination", "plan_inputs", "staging_dir", "write_atomically"]

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def plan_inputs(plan: WritePlan) -> set[Path]:
    """Every local directory the plan reads: its source and the directory of each file a byte is copied from."""
    inputs = {plan.source_dir}
    for shard in plan.written:
        inputs |= {t.source.path.parent for t in shard.tensors if isinstance(t.source, FileRange)}
    return inputs


def apply_plan(plan: WritePlan, out: Path, *, overwrite: bool = False) -> Path:
    """Write the checkpoint `plan` describes to `out`, atomically (see the module docstring).

    Raises:
        UsageError: `out` exists (without `overwrite`), overlaps an input, or the plan names a file outside it.
        MtpforgeError: another run writes `out`, writing failed (disk full, permissions, a source changed) or
            the staged output does not validate; nothing is left at `out` and the input is untouched.
    """
    out = Path(os.path.abspath(out))
    _check_names(plan)
    inputs = plan_inputs(plan)
    check_destination(inputs, out, overwrite=overwrite)
    staging = staging_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out_lock(out):
            check_destination(inputs, out, overwrite=overwrite)  # again, now that no other run can change it
            clear_stale(staging)
            os.mkdir(staging)
            try:
                with _signals_as_exit():
                    _stage(plan, staging, out)
                    _validate(plan, staging, out)
                    publish(staging, out, overwrite=overwrite)
            except BaseException:
                _drop(staging)
                raise
    except OSError as e:
        raise as_user_error(e, out) from e
    return out


def _check_names(plan: WritePlan) -> None:
    names = [*plan.linked, *(s.name for s in plan.written), *plan.json_files]
    for name in names:
        check_file_name(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"the {plan.verb} plan writes {twice[0]} twice", hint="choose another --shard-name")


def _stage(plan: WritePlan, staging: Path, out: Path) -> None:
    for name in plan.linked:
        _link_or_copy(plan.source_dir, name, staging / name)
    progress = Progress(f"{plan.verb} -> {out.name}", plan.written_bytes)
    for shard in plan.written:
        _write_shard(staging / shard.name, shard, progress)
    progress.close()
    for name, doc in plan.json_files.items():
        _write_new(staging / name, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    fsync_dir(staging)


def _validate(plan: WritePlan, staging: Path, out: Path) -> None:
    """Read the staged output back as the verbs will: refuse to publish anything they would refuse."""
    try:
        for name in plan.json_files:
            json.loads((staging / name).read_bytes())
        ckpt = open_checkpoint(staging)
        if ckpt.header_errors:  # a bug if it ever happens
            raise CheckpointError(f"the staged output does not read back: {next(iter(ckpt.header_errors.values()))}")
        expected_inventory(detect_family(ckpt.config), ckpt.config, ckpt.tensors)
    except (MtpforgeError, ValueError, TypeError, KeyError, ArithmeticError, RecursionError) as e:
        hint = getattr(e, "hint", None)
        raise CheckpointError(f"the {plan.verb} output would not be usable, so nothing was written to {out}: {e}",
                              hint=hint or "fix the input's config or files; the input is untouched") from e


def _link_or_copy(root: Path, name: str, dst: Path) -> None:
    """Reuse the input file `root/name`: a regular file inside `root` (`checkpoint.paths.resolve`), never a FIFO,
    a device or a symlink that leaves it."""
    src = paths.resolve(root, name, what="input file")
    try:
        os.link(src, dst)  # dst never exists: link(2) refuses to replace
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        with paths.open_regular(src) as g, os.fdopen(os.open(dst, _NEW_FILE, 0o644), "wb") as f:
            shutil.copyfileobj(g, f, 16 << 20)
            f.flush()
            os.fsync(f.fileno())


def _write_shard(path: Path, shard: NewShard, progress: Progress) -> None:
    header = encode_header([TensorData(t.name, t.dtype, t.shape) for t in shard.tensors], dict(shard.metadata))
    with os.fdopen(os.open(path, _NEW_FILE, 0o644), "wb") as f:
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


def _write_new(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, _NEW_FILE, 0o644), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write one file whole or not at all: a fresh hidden temporary beside it (never an existing path), fsync, rename."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        clear_stale(tmp)
        _write_new(tmp, data)
        os.replace(tmp, out)
    except OSError as e:
        _drop(tmp)
        raise as_user_error(e, out) from e


def _drop(path: Path) -> None:
    try:
        if os.path.lexists(path):
            remove_path(path)
    except OSError:
        pass


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

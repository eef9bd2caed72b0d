"""Where an output may go, who may write it, and the one atomic step that makes it appear.

Invariants (every writing verb goes through here, via `stage.apply_plan` or `publish_dir`):

- `check_destination` refuses an output equal to, inside or containing any input directory (by realpath),
  and an existing output without `overwrite`.
- `out_lock` holds an exclusive `flock` on `.<out>.lock` beside the output (never inside it) for the whole
  stage and publish; a second run on the same output fails at once (exit 3) instead of racing.
- `publish` is one atomic step: `renameat2(RENAME_NOREPLACE)` for a new output, `renameat2(RENAME_EXCHANGE)`
  to replace one (the output is never absent; the old tree ends at the staging name and is removed). Only
  where the kernel or file system lacks renameat2 does it fall back to `rename`, moving an old output to a
  fresh unique name first: it never deletes a path this run did not create or was not asked to replace.
- `remove_path` never follows a symlink: a link or file is unlinked, a directory removed without descending
  through links.
- `as_user_error` turns every OSError of the write path into an exit-3 error naming the path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mtpforge.errors import MtpforgeError, UsageError

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def check_destination(inputs: os.PathLike[str] | str | Iterable[os.PathLike[str] | str], out: Path, *,
                      overwrite: bool) -> None:
    """Refuse an output that exists (without `overwrite`) or that is, lies inside or contains an input directory.

    Raises:
        UsageError: exit 2; nothing has been written.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out = Path(os.path.abspath(out))
    dst = os.path.realpath(out)
    for near in (dst, os.path.realpath(staging_dir(out))):
        for source in paths:
            src = os.path.realpath(source)
            if near == src or near.startswith(src + os.sep) or src.startswith(near + os.sep):
                raise UsageError(f"--out {out} overlaps the input {source}",
                                 hint="write the output to a new directory; inputs are never modified")
    if os.path.lexists(out) and not overwrite:
        raise UsageError(f"--out {out} already exists", hint="choose a new directory, or pass --overwrite to replace it")


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of `out` (`.<out>.lock` beside it) while the block runs.

    Raises:
        MtpforgeError: exit 3, another run holds it.
    """
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MtpforgeError(f"another mtpforge run is writing {out} (it holds {path})",
                                hint="wait for it to finish, or choose another --out; the input is untouched") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file after we opened it: lock the file at the path
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: a run that opened it sees a stale inode and retries
        except OSError:
            pass
        os.close(fd)


def clear_stale(path: Path) -> None:
    """Remove what a killed run left at `path` (a directory, a file or a symlink), never following a link."""
    if os.path.lexists(path):
        remove_path(path)


def remove_path(path: Path) -> None:
    """Remove `path` itself: unlink a file or symlink, remove a directory tree without following links."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based: never descends through a symlink
    else:
        os.unlink(path)


def publish(staged: Path, out: Path, *, overwrite: bool) -> None:
    """Make `staged` appear at `out` in one atomic step (see the module docstring). Call it holding `out_lock`."""
    if not os.path.lexists(out):
        if not _renameat2(staged, out, RENAME_NOREPLACE):
            os.rename(staged, out)  # fallback: the lock and the check above keep this to the one writer
    elif not overwrite:
        raise UsageError(f"--out {out} already exists", hint="choose a new directory, or pass --overwrite to replace it")
    elif _renameat2(staged, out, RENAME_EXCHANGE):  # out now holds the new tree, staged the old one
        _discard(staged)
    else:
        old = _unique_beside(out, "old")
        os.rename(out, old)
        try:
            os.rename(staged, out)
        except BaseException:
            os.rename(old, out)
            raise
        _discard(old)
    fsync_dir(out.parent)


def publish_dir(staged: Path, out: Path) -> None:
    """Publish a finished directory made elsewhere (`build`) at a new `out`, under the lock."""
    out = Path(os.path.abspath(out))
    try:
        with out_lock(out):
            publish(staged, out, overwrite=False)
    except OSError as e:
        raise as_user_error(e, out) from e


def _discard(path: Path) -> None:
    """Drop the replaced output; the new one is already published, so a failure here only leaves litter."""
    try:
        remove_path(path)
    except OSError:
        pass


def _unique_beside(out: Path, tag: str) -> Path:
    while True:
        candidate = out.parent / f".{out.name}.{tag}-{secrets.token_hex(6)}"
        if not os.path.lexists(candidate):
            return candidate


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False where the kernel, libc or file system does not offer it."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _libc_renameat2():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def as_user_error(e: OSError, out: Path) -> MtpforgeError:
    """An exit-3 error for an OSError met while writing `out`: the cause, the path, and that the input is untouched."""
    if e.errno == errno.ENOSPC:
        return MtpforgeError(f"no space left on the device of {out.parent}; nothing was written to {out}",
                             hint="free space or choose another --out; the input is untouched")
    where = e.filename or out
    return MtpforgeError(f"writing {out} failed: {e.strerror or e} ({where}); nothing was written to {out}",
                         hint="the input is untouched")

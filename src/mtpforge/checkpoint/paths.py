"""The one place that resolves a path a verb reads inside a checkpoint directory.

Every file a verb reads (shards, the index, config.json, tokenizer files,
chat_template.jinja, README.md, hf_quant_config.json) is named by someone who
downloaded it, so it is untrusted. A name must be one path component (vLLM only
loads shards at the top level: it globs `<folder>/*.safetensors`,
`model_loader/default_loader.py`), with no NUL byte, and resolve to a regular
file inside the directory. A symlink is followed only when it stays inside, or
lands in the Hugging Face cache's `blobs/` folder (how every snapshot that
huggingface_hub downloads is laid out). FIFOs, devices, sockets and
directories are refused, and files are opened with O_NOFOLLOW | O_NONBLOCK so a
FIFO swapped in after the check cannot hang a verb.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mtpforge.errors import CheckpointError

MAX_TEXT_BYTES = 64 << 20  # a config, tokenizer or card file; tokenizer.json of a 248k vocab is ~20 MB


def check_name(root: Path, relative: object, *, what: str) -> Path:
    """`root / relative` when `relative` is a plain file name; else CheckpointError (exit 3)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise CheckpointError(f"{what} {relative!r}: not a file name (empty, not a string, or with a NUL byte)",
                              hint="the index is corrupt or hostile; re-download it")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise CheckpointError(f"{what} {relative!r}: shard paths must be relative and stay inside {root}",
                              hint="the index is corrupt or hostile; re-download it")
    if "/" in relative:
        raise CheckpointError(f"{what} {relative!r}: a path into a subdirectory; engines load only the files at the top "
                              f"of {root} (vLLM globs <folder>/*.safetensors)",
                              hint="move the shard to the top of the checkpoint directory and fix the index")
    return root / relative


def unsafe_reason(root: Path, name: str) -> str | None:
    """Why `root/name` must not be read, or None when it is a regular file inside `root` (or absent)."""
    path = root / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be examined: {e.strerror}"
    if stat.S_ISLNK(mode):
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if not _within(real, real_root) and not _within(real, _hf_cache_blobs(Path(real_root))):
            return f"a symlink that leaves {root} (to {real})"
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return None  # dangling: absent
    if not stat.S_ISREG(mode):
        return f"not a regular file ({_kind(mode)})"
    return None


def resolve(root: Path, relative: object, *, what: str) -> Path:
    """The real path of `root/relative`, refusing a bad name, a symlink that leaves `root` or a non-regular file."""
    path = check_name(root, relative, what=what)
    reason = unsafe_reason(root, path.name)
    if reason is not None:
        hint = ("copy the file into the checkpoint directory instead of linking it" if "symlink" in reason
                else "replace it with the regular file it stands for")
        raise CheckpointError(f"{what} {relative!r}, {reason}", hint=hint)
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def exists(root: Path, name: str) -> bool:
    """True when `root/name` is present (any kind of file, a symlink whose target exists)."""
    return os.path.exists(root / name)


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading: never through a final symlink, never blocking, regular files only.

    Raises:
        OSError: the file cannot be opened, or is not a regular file (ELOOP for a symlink).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(0, f"not a regular file ({_kind(mode)})", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(root: Path, name: str, *, what: str = "file", limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the checkpoint file `name`, refused (CheckpointError) when unsafe or over `limit` bytes."""
    path = resolve(root, name, what=what)
    try:
        with open_regular(path) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise CheckpointError(f"{root / name}: cannot read: {e.strerror}", hint="check the file's permissions") from e
    if len(data) > limit:
        raise CheckpointError(f"{root / name}: over the {limit >> 20} MiB read limit for a text file",
                              hint="restore this file from the original checkpoint")
    return data


def read_text(root: Path, name: str, *, what: str = "file") -> str:
    return read_bytes(root, name, what=what).decode("utf-8", errors="replace")


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "not a regular file"


def _within(path: str, root: str | None) -> bool:
    return root is not None and (path == root or path.startswith(root.rstrip(os.sep) + os.sep))


def _hf_cache_blobs(real_root: Path) -> str | None:
    # <cache>/models--org--name/snapshots/<sha>/ links files to ../../blobs/<hash>
    if real_root.parent.name == "snapshots":
        return str(real_root.parent.parent / "blobs")
    return None

"""Where the bytes of a tensor to write come from: a range of a local file, a
range of a remote file (`checkpoint.http.HttpRange`), or bytes computed when
the writer reaches them.

Each streams in bounded chunks and check that every promised byte arrived, so
a donor that shrinks or vanishes mid-read, or a server that drops the
connection, is an error instead of a silently short tensor.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mtpforge.checkpoint import paths
from mtpforge.checkpoint.http import CHUNK_BYTES
from mtpforge.errors import SourceError


@dataclass(frozen=True)
class FileRange:
    """Bytes [begin, end) of a local file."""

    path: Path
    begin: int
    end: int

    def describe(self) -> str:
        return f"{self.path} [{self.begin}:{self.end}]"

    def copy_into(self, fd: int, size: int = CHUNK_BYTES) -> int:
        """Append the range to the file open at `fd` (at its current offset), in the kernel
        (`copy_file_range`) where possible, as `cp` does; return the bytes copied."""
        try:
            with self._open() as f:
                self._check_size(f.fileno())
                offset, copied = self.begin, 0
                while copied < self.end - self.begin:
                    n = os.copy_file_range(f.fileno(), fd, min(size, self.end - offset), offset)
                    if n == 0:
                        raise SourceError(f"{self.path}: ended {self.end - offset} bytes early while being read",
                                          hint="the source changed; run again")
                    offset += n
                    copied += n
                return copied
        except FileNotFoundError as e:
            raise SourceError(f"{self.path}: disappeared while being read", hint="the source changed; run again") from e
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        written = 0  # no in-kernel copy between these files: stream through memory
        for chunk in self.chunks(size):
            os.write(fd, chunk)
            written += len(chunk)
        return written

    def _open(self) -> BinaryIO:
        # Regular files only, never blocking: a FIFO swapped in for a shard is an error, not a hang. The checkpoint
        # reader has already refused links that leave the directory; a link inside (the HF cache's blobs) is followed.
        return paths.open_regular(Path(os.path.realpath(self.path)))

    def _check_size(self, fd: int) -> None:
        if os.fstat(fd).st_size < self.end:
            raise SourceError(f"{self.path}: the file shrank to {os.fstat(fd).st_size} bytes while being read "
                              f"(tensor bytes end at {self.end})", hint="the source changed under mtpforge; run again")

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            with self._open() as f:
                self._check_size(f.fileno())
                f.seek(self.begin)
                left = self.end - self.begin
                while left:
                    data = f.read(min(size, left))
                    if not data:
                        raise SourceError(f"{self.path}: ended {left} bytes early while being read",
                                          hint="the source changed; run again")
                    left -= len(data)
                    yield data
        except FileNotFoundError as e:
            raise SourceError(f"{self.path}: disappeared while being read", hint="the source changed; run again") from e


@dataclass(frozen=True)
class Computed:
    """Bytes computed when the writer reaches them (a quantized tensor), so memory holds one at a time."""

    label: str
    compute: Callable[[], bytes]
    end: int  # the byte count the computation must produce
    begin: int = 0

    def describe(self) -> str:
        return self.label

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        data = self.compute()
        if len(data) != self.end:
            raise AssertionError(f"{self.label}: computed {len(data)} bytes, planned {self.end}")  # a bug
        for i in range(0, len(data), size):
            yield data[i : i + size]



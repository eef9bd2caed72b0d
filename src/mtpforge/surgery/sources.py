"""Where the bytes of a tensor to write come from: a range of a local file, or
a range of a remote file fetched with HTTP range requests.

Both stream in bounded chunks and check that every promised byte arrived, so
a donor that shrinks or vanishes mid-read, or a server that drops the
connection, is an error instead of a silently short tensor.
"""

from __future__ import annotations

import errno
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mtpforge.errors import MtpforgeError

CHUNK_BYTES = 16 << 20  # bounded memory: one chunk in flight, whatever the tensor size
HTTP_TIMEOUT_SEC = 60


class SourceError(MtpforgeError):
    """A source of tensor bytes failed: the file changed or the server misbehaved."""


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
            with open(self.path, "rb") as f:
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

    def _check_size(self, fd: int) -> None:
        if os.fstat(fd).st_size < self.end:
            raise SourceError(f"{self.path}: the file shrank to {os.fstat(fd).st_size} bytes while being read "
                              f"(tensor bytes end at {self.end})", hint="the source changed under mtpforge; run again")

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                self._check_size(f.fileno())
                f.seek(self.begin)
                left = self.end - self.begin
                while left:
                    data = f.read(min(size, left))
                    if not data:
                        raise SourceError(f"{self.path}: ended {left} bytes early while being read", hint="the source changed; run again")
                    left -= len(data)
                    yield data
        except FileNotFoundError as e:
            raise SourceError(f"{self.path}: disappeared while being read", hint="the source changed; run again") from e


@dataclass(frozen=True)
class HttpRange:
    """Bytes [begin, end) of a remote file, fetched with `Range` requests."""

    url: str
    begin: int
    end: int
    headers: tuple[tuple[str, str], ...] = field(default=())

    def describe(self) -> str:
        return f"{self.url} [{self.begin}:{self.end}]"

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        pos = self.begin
        while pos < self.end:
            stop = min(pos + size, self.end)
            data = fetch_range(self.url, pos, stop, dict(self.headers))
            pos = stop
            yield data


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


def fetch_range(url: str, begin: int, end: int, headers: dict[str, str]) -> bytes:
    """GET bytes [begin, end) of `url`; the server must honour the range exactly."""
    if end <= begin:
        return b""
    status, _, data = http_get(url, {**headers, "Range": f"bytes={begin}-{end - 1}"})
    if status != 206:
        raise SourceError(f"{url}: the server ignored the byte range (HTTP {status})",
                          hint="the hub endpoint must support HTTP range requests")
    if len(data) != end - begin:
        raise SourceError(f"{url}: got {len(data)} of {end - begin} bytes (connection dropped)", hint="run again")
    return data


def http_get(url: str, headers: dict[str, str], *, missing_ok: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One GET: (status, response headers, body). Every network failure becomes a SourceError.

    With `missing_ok`, a 404 returns (404, {}, b"") instead of raising.
    """
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SEC) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as e:
        if missing_ok and e.code == 404:
            return 404, {}, b""
        raise SourceError(f"{url}: HTTP {e.code} {e.reason}", hint=_http_hint(e.code)) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise SourceError(f"{url}: connection failed or dropped: {reason!r}", hint="check the network (or HF_ENDPOINT) and run again") from e


def _http_hint(code: int) -> str:
    if code in (401, 403):
        return "the repository is gated or private: set HF_TOKEN"
    if code == 404:
        return "check the repository id, the revision and the file name"
    return "the server failed; run again later"

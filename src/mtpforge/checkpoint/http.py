"""The HTTP client for remote checkpoints: one GET, exact byte ranges, and a
range source that streams a remote tensor in bounded chunks.

urllib only (the core install has no HTTP library). Every network failure
becomes a `SourceError` with a hint; a server that ignores a range or drops the
connection mid-body is an error, never a short tensor.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from mtpforge.errors import SourceError

CHUNK_BYTES = 16 << 20  # bounded memory: one chunk in flight, whatever the tensor size
HTTP_TIMEOUT_SEC = 60


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
        raise SourceError(f"{url}: connection failed or dropped: {reason!r}",
                          hint="check the network (or HF_ENDPOINT) and run again") from e


def _http_hint(code: int) -> str:
    if code in (401, 403):
        return "the repository is gated or private: set HF_TOKEN"
    if code == 404:
        return "check the repository id, the revision and the file name"
    return "the server failed; run again later"

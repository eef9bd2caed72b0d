"""The HTTP client for remote checkpoints and running engines: one request,
exact byte ranges, and a range source that streams a remote tensor in bounded chunks.

urllib only (the core install has no HTTP library). Every network failure
becomes a `SourceError` with a hint; a server that ignores a range or drops the
connection mid-body is an error, never a short tensor. Every read is bounded:
each socket operation by `timeout` and the whole body by twice that, every body
by `max_bytes` (an error body is never read at all). A redirect to another
scheme, host or port drops `Authorization` and `Cookie`, as requests'
`rebuild_auth` does, so a hub token never reaches a host it was not meant for.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mtpforge.errors import SourceError

CHUNK_BYTES = 16 << 20  # bounded memory: one chunk in flight, whatever the tensor size
HTTP_TIMEOUT_SEC = 60
MAX_DOCUMENT_BYTES = 1 << 20  # a JSON document (config, index, /v1/models, a completion)
READ_BLOCK = 1 << 16
_CREDENTIALS = ("authorization", "cookie")
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    status, _, data = http_get(url, {**headers, "Range": f"bytes={begin}-{end - 1}"}, max_bytes=end - begin)
    if status != 206:
        raise SourceError(f"{url}: the server ignored the byte range (HTTP {status})",
                          hint="the hub endpoint must support HTTP range requests")
    if len(data) != end - begin:
        raise SourceError(f"{url}: got {len(data)} of {end - begin} bytes (connection dropped)", hint="run again")
    return data


def http_get(url: str, headers: dict[str, str], *, missing_ok: bool = False, timeout: float = HTTP_TIMEOUT_SEC,
             max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[int, dict[str, str], bytes]:
    """One GET: (status, response headers, body). Every network failure becomes a SourceError.

    With `missing_ok`, a 404 returns (404, {}, b"") instead of raising.
    """
    return http_request(url, headers, missing_ok=missing_ok, timeout=timeout, max_bytes=max_bytes)


def http_request(url: str, headers: dict[str, str], *, data: bytes | None = None, missing_ok: bool = False,
                 timeout: float = HTTP_TIMEOUT_SEC, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[int, dict[str, str], bytes]:
    """One GET (or POST with `data`), at most `max_bytes` of body, within about `2 x timeout` seconds."""
    request = urllib.request.Request(url, data=data, headers=headers)
    deadline = time.monotonic() + 2 * timeout
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            if response.status == 200 and "Range" in headers:  # the whole file is coming: do not read it
                raise SourceError(f"{url}: the server ignored the byte range (HTTP 200)",
                                  hint="the hub endpoint must support HTTP range requests")
            return response.status, dict(response.headers.items()), _read_capped(response, url, max_bytes, deadline, timeout)
    except urllib.error.HTTPError as e:
        e.close()  # the error body is never read: its size is the server's to choose
        if missing_ok and e.code == 404:
            return 404, {}, b""
        raise SourceError(f"{url}: HTTP {e.code} {e.reason}", hint=_http_hint(url, e.code)) from e
    except TimeoutError as e:
        raise SourceError(f"{url}: no answer within {timeout:g} s (timed out)",
                          hint="is the server overloaded or stalled? run again") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise SourceError(f"{url}: connection failed or dropped: {reason!r}",
                          hint="check the network (or HF_ENDPOINT) and run again") from e


def _read_capped(response: Any, url: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    while block := response.read1(READ_BLOCK):
        size += len(block)
        if size > max_bytes:
            raise SourceError(f"{url}: the response is larger than the {max_bytes:,}-byte cap; not read further",
                              hint="is this the right URL? a well-behaved server answers far less")
        if time.monotonic() > deadline:
            raise SourceError(f"{url}: the response took longer than {2 * timeout:g} s (trickling); not read further",
                              hint="is the server overloaded or stalled? run again")
        parts.append(block)
    if getattr(response, "length", None):  # read1 returns b"" when the peer closes early; read() would raise this
        raise http.client.IncompleteRead(b"".join(parts), response.length)
    return b"".join(parts)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def crosses_origin(old_url: str, new_url: str) -> bool:
    """True when a redirect leaves the origin: another host or port, or another scheme (except http -> https on the
    default ports, which requests also allows)."""
    old, new = _origin(old_url), _origin(new_url)
    if old[1] != new[1]:
        return True
    if old[0] == "http" and new[0] == "https" and old[2] == 80 and new[2] == 443:
        return False
    return old != new


class _StripCredentialsOnRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _DEFAULT_PORTS:
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-HTTP URL {newurl!r} refused", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and crosses_origin(req.full_url, newurl):
            for name in [k for k in new.headers if k.lower() in _CREDENTIALS]:
                del new.headers[name]
            for name in [k for k in new.unredirected_hdrs if k.lower() in _CREDENTIALS]:
                del new.unredirected_hdrs[name]
        return new


_OPENER = urllib.request.build_opener(_StripCredentialsOnRedirect)


# An engine's own endpoints (OpenAI API, Prometheus metrics, health): their errors are not the hub's.
_ENGINE_PATHS = ("/v1/", "/metrics", "/health")


def _http_hint(url: str, code: int) -> str:
    engine = any(part in urllib.parse.urlsplit(url).path for part in _ENGINE_PATHS)
    if code in (401, 403):
        return "the server wants an API key (vLLM --api-key)" if engine else "the repository is gated or private: set HF_TOKEN"
    if code == 404:
        return "is this an OpenAI-compatible server (vLLM, SGLang)?" if engine else \
            "check the repository id, the revision and the file name"
    return "the server failed; run again later"

"""One streaming completion over HTTP/1.1, timed per token, on asyncio streams.

A hand-written asyncio Protocol rather than an HTTP library or StreamReader:
the load generator must hold hundreds of streams open on a small share of
one core, so each arriving packet is parsed in the transport's callback with
no task switch per event. All it needs is one POST, a status line, chunked
transfer decoding and server-sent events.
Every failure (refused, reset mid-stream, HTTP error, time-out, a stream that
ends without `[DONE]`, an event that is not an OpenAI JSON chunk) becomes a
`StreamResult` with `error` set; nothing raises out of `stream_completion`.
Memory is bounded per stream: the response head to `MAX_HEAD_BYTES`, an error
body to `MAX_ERROR_BODY_BYTES` (then the stream is failed, not read further),
one undelivered event to `MAX_EVENT_BYTES`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_ERROR_BODY = 300  # characters of an error body quoted in the message
MAX_HEAD_BYTES = 64 << 10
MAX_ERROR_BODY_BYTES = 1 << 20
MAX_EVENT_BYTES = 1 << 20


@dataclass
class StreamResult:
    """What one request measured; times are seconds from sending the request."""

    ok: bool = False
    error: str | None = None
    ttft: float | None = None
    latency: float | None = None  # until [DONE]
    token_times: list[float] = field(default_factory=list)  # when each content-bearing event arrived
    output_tokens: int = 0  # the server's usage count when it sent one, else the events seen
    prompt_tokens: int | None = None

    @property
    def itl(self) -> list[float]:
        """Gaps between content events (with MTP one event can carry several tokens)."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.latency is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class _StreamError(Exception):
    pass


async def stream_completion(url: str, body: dict[str, Any], *, timeout: float) -> StreamResult:
    """POST `body` (with `stream: true` added) to `url` and time the events until `[DONE]` or `timeout` seconds."""
    result = StreamResult()
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            parts = urlsplit(url)
            if parts.hostname is None:  # bench checks its URLs first (bench._check_url)
                raise ValueError(f"{url} names no host")
            protocol = _SseProtocol(result, start, loop.create_future())
            transport, _ = await loop.create_connection(lambda: protocol, parts.hostname, parts.port or 80)
            payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
            transport.write(
                f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await protocol.done
            result.ok = True
    except TimeoutError:
        received = f" ({len(result.token_times)} events received)" if result.token_times else ""
        result.error = f"timed out after {timeout:g} s" + received
    except _StreamError as e:
        result.error = str(e)
    except (OSError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        if transport is not None:
            transport.close()
    if not result.ok:
        result.latency = None
    return result


class _SseProtocol(asyncio.Protocol):
    """Parses the response as bytes arrive; resolves `done` at `[DONE]`, fails it with `_StreamError` otherwise."""

    def __init__(self, result: StreamResult, start: float, done: asyncio.Future[None]) -> None:
        self.result, self.start, self.done = result, start, done
        self.head = b""
        self.status: int | None = None
        self.dechunker: _Dechunker | None = None
        self.body = b""  # undelivered server-sent-event bytes (or the error body)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self._receive(data)
        except _StreamError as e:
            self._fail(e)
        except Exception as e:  # whatever the bytes: a failed request, never a crash of the event loop
            self._fail(_StreamError(f"bad stream: {type(e).__name__}: {e}"[:MAX_ERROR_BODY]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.status is not None and self.status != 200:
            self._fail(_StreamError(f"HTTP {self.status}: {self._quote()}"))
        elif exc is not None:
            self._fail(_StreamError(f"{type(exc).__name__}: {exc} after {len(self.result.token_times)} events"))
        else:
            self._fail(_StreamError(f"stream ended before [DONE] after {len(self.result.token_times)} events"))

    def _fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def _receive(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    raise _StreamError(f"bad stream: response head over {MAX_HEAD_BYTES:,} bytes; not read further")
                return
            self.status, chunked = _parse_head(self.head[:end])
            self.dechunker = _Dechunker() if chunked else None
            data = self.head[end + 4:]
        self.body += self.dechunker.feed(data) if self.dechunker else data
        pending = len(self.body) + (len(self.dechunker.buffer) if self.dechunker else 0)
        if self.status != 200:
            if pending > MAX_ERROR_BODY_BYTES:  # a server may send an endless error body: do not hold it
                raise _StreamError(f"HTTP {self.status}: {self._quote()} (error body over {MAX_ERROR_BODY_BYTES:,} bytes; "
                                   "not read further)")
            return  # collected for the message; reported when the server closes
        while (end := self.body.find(b"\n\n")) >= 0:
            event, self.body = self.body[:end], self.body[end + 2:]
            for line in event.splitlines():
                if line.startswith(b"data:") and self._on_data(line[5:].strip()):
                    # When [DONE] arrived, not when the awaiting task gets to run.
                    self.result.latency = time.perf_counter() - self.start
                    self.done.set_result(None)
                    return
        if len(self.body) + (len(self.dechunker.buffer) if self.dechunker else 0) > MAX_EVENT_BYTES:
            raise _StreamError(f"bad stream: an event over {MAX_EVENT_BYTES:,} bytes without its end; not read further")

    def _quote(self) -> str:
        return self.body[:MAX_ERROR_BODY].decode(errors="replace").strip()

    def _on_data(self, data: bytes) -> bool:
        """Handle one `data:` payload; True at `[DONE]`."""
        if data == b"[DONE]":
            if self.result.ttft is None:
                raise _StreamError("stream finished without a token")
            return True
        try:
            doc = json.loads(data)
        except ValueError:
            raise _StreamError(f"bad stream: a data line is not JSON: {data[:80]!r}") from None
        if not isinstance(doc, dict):
            raise _StreamError(f"bad stream: a data line is not a JSON object: {data[:80]!r}")
        if "error" in doc:
            raise _StreamError(f"server error mid-stream: {str(doc['error'])[:MAX_ERROR_BODY]}")
        now = time.perf_counter() - self.start
        choices = doc.get("choices") or []
        first = choices[0] if isinstance(choices, list) and choices else {}
        if not isinstance(first, dict):
            raise _StreamError(f"bad stream: choices[0] is not a JSON object: {data[:80]!r}")
        delta = first.get("delta")
        if first.get("text") or (isinstance(delta, dict) and delta.get("content")):
            if self.result.ttft is None:
                self.result.ttft = now
            self.result.token_times.append(now)
            self.result.output_tokens = len(self.result.token_times)
        usage = doc.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            tokens, prompt = usage["completion_tokens"], usage.get("prompt_tokens")
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise _StreamError(f"bad stream: usage.completion_tokens is not a count: {tokens!r}"[:MAX_ERROR_BODY])
            self.result.output_tokens = tokens
            self.result.prompt_tokens = prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None
        return False


def _parse_head(head: bytes) -> tuple[int, bool]:
    """Status code and whether the body is chunked."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise _StreamError(f"not an HTTP response: {status_line[:80]!r}")
    chunked = any(k.strip().lower() == "transfer-encoding" and "chunked" in v.lower()
                  for k, _, v in (ln.partition(":") for ln in lines))
    return int(fields[1]), chunked


class _Dechunker:
    """HTTP/1.1 chunked transfer decoding, fed arbitrary slices of the byte stream."""

    def __init__(self) -> None:
        self.buffer = b""
        self.need: int | None = None  # bytes of the current chunk still to come (None: expecting a size line)
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while not self.done:
            if self.need is None:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                self.need = int(self.buffer[:end].split(b";")[0], 16)
                self.buffer = self.buffer[end + 2:]
                self.done = self.need == 0
                continue
            if len(self.buffer) < self.need + 2:
                break
            out.append(self.buffer[: self.need])
            self.buffer = self.buffer[self.need + 2:]
            self.need = None
        return b"".join(out)

"""One streaming completion over HTTP/1.1, timed per token, on asyncio streams.

A hand-written client rather than an HTTP library: the load generator must
hold hundreds of streams open on a small share of one core, and all it needs
is one POST, a status line, chunked transfer decoding and server-sent events.
Every failure (refused, reset mid-stream, HTTP error, time-out, a stream that
ends without `[DONE]`) becomes a `StreamResult` with `error` set; nothing
raises out of `stream_completion`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_ERROR_BODY = 300


@dataclass
class StreamResult:
    """What one request measured; times are seconds from sending the request."""

    ok: bool = False
    error: str | None = None
    ttft: float | None = None
    latency: float | None = None
    token_times: list[float] = field(default_factory=list)  # when each content-bearing event arrived
    output_tokens: int = 0  # the server's usage count when it sent one, else the events seen
    prompt_tokens: int | None = None

    @property
    def itl(self) -> list[float]:
        """Gaps between content events (with MTP one event can carry several tokens)."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

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
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            parts = urlsplit(url)
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
            writer.write(
                f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            status, headers = await _read_head(reader)
            chunks = _chunked(reader) if headers.get("transfer-encoding") == "chunked" else _until_eof(reader)
            if status != 200:
                text = b"".join([c async for c in chunks])[:MAX_ERROR_BODY].decode(errors="replace")
                raise _StreamError(f"HTTP {status}: {text.strip()}")
            await _read_events(chunks, result, start)
            result.ok = True
    except TimeoutError:
        result.error = f"timed out after {timeout:g} s" + (f" ({len(result.token_times)} events received)" if result.token_times else "")
    except _StreamError as e:
        result.error = str(e)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}" + (f" after {len(result.token_times)} events" if result.token_times else "")
    finally:
        if writer is not None:
            writer.close()
    result.latency = time.perf_counter() - start if result.ok else None
    return result


async def _read_events(chunks: Any, result: StreamResult, start: float) -> None:
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    if result.ttft is None:
                        raise _StreamError("stream finished without a token")
                    return
                _on_event(json.loads(data), result, time.perf_counter() - start)
    raise _StreamError(f"stream ended before [DONE] after {len(result.token_times)} events")


def _on_event(doc: dict[str, Any], result: StreamResult, now: float) -> None:
    if "error" in doc:
        raise _StreamError(f"server error mid-stream: {doc['error']}")
    choices = doc.get("choices") or []
    if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
        if result.ttft is None:
            result.ttft = now
        result.token_times.append(now)
        result.output_tokens = len(result.token_times)
    usage = doc.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        result.output_tokens = int(usage["completion_tokens"])
        result.prompt_tokens = usage.get("prompt_tokens")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    fields = status_line.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/"):
        raise _StreamError(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip().lower()
    return int(fields[1]), headers


async def _chunked(reader: asyncio.StreamReader) -> Any:
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def _until_eof(reader: asyncio.StreamReader) -> Any:
    while chunk := await reader.read(65536):
        yield chunk

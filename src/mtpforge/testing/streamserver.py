"""A canned OpenAI-compatible streaming server: exact timings and every way a stream can fail.

`bench` is tested against it (and measured against it in bench/loadgen_overhead.py)
because a real engine cannot be told to stall the first token for 300 ms, drop the
connection after 5 events or answer 503. It speaks real HTTP/1.1 with chunked
server-sent events, `/v1/models`, `/health` and a `/metrics` page whose
spec-decode counters follow `acceptance`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Behaviour:
    ttft: float = 0.0  # seconds before the first event
    itl: float = 0.0  # seconds between events
    tokens_per_event: int = 1  # >1 mimics MTP: several accepted tokens arrive together
    fail_after: int | None = None  # close the connection after this many events
    error_event_after: int | None = None  # send an error event after this many events
    status: int = 200  # answer completions with this status instead
    hang: bool = False  # never answer completions
    acceptance: tuple[float, ...] = (0.8, 0.5)  # per draft position, for /metrics


class CannedServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.counters = {"drafts": 0.0, "draft_tokens": 0.0, "accepted": 0.0}
        self.per_pos = [0.0] * len(behaviour.acceptance)
        self.completions = 0
        self.active = self.max_active = 0
        self.prompts: list[object] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            path = request.split(b" ")[1].decode() if request.count(b" ") >= 2 else "/"
            if path == "/v1/completions":
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    await self.complete(body, writer)
                finally:
                    self.active -= 1
            elif path == "/v1/models":
                self.respond(writer, 200, json.dumps({"object": "list", "data": [{"id": "canned", "object": "model"}]}))
            elif path == "/health":
                self.respond(writer, 200, "")
            elif path == "/metrics":
                self.respond(writer, 200, self.metrics(), "text/plain")
            else:
                self.respond(writer, 404, json.dumps({"error": "not found"}))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def respond(self, writer: asyncio.StreamWriter, status: int, text: str, kind: str = "application/json") -> None:
        data = text.encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + data)

    async def complete(self, body: dict, writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        self.completions += 1
        self.prompts.append(body.get("prompt"))
        if b.hang:
            await asyncio.sleep(3600)
        if b.status != 200:
            self.respond(writer, b.status, json.dumps({"error": {"message": "canned failure", "code": b.status}}))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        total = int(body.get("max_tokens", 16))
        events = -(-total // b.tokens_per_event)
        await asyncio.sleep(b.ttft)
        for i in range(events):
            if b.fail_after is not None and i == b.fail_after:
                writer.transport.abort()
                return
            if b.error_event_after is not None and i == b.error_event_after:
                self.event(writer, {"error": {"message": "canned mid-stream error"}})
                return
            if i:
                await asyncio.sleep(b.itl)
            self.event(writer, {"choices": [{"index": 0, "text": "tok" * b.tokens_per_event}]})
            await writer.drain()
        self.event(writer, {"choices": [], "usage": {"prompt_tokens": len(body.get("prompt", "")), "completion_tokens": total}})
        self.event(writer, "[DONE]")
        writer.write(b"0\r\n\r\n")
        self.count_drafts(events)

    def event(self, writer: asyncio.StreamWriter, doc: object) -> None:
        data = f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def count_drafts(self, drafts: int) -> None:
        k = len(self.behaviour.acceptance)
        self.counters["drafts"] += drafts
        self.counters["draft_tokens"] += drafts * k
        for j, rate in enumerate(self.behaviour.acceptance):
            self.per_pos[j] += drafts * rate
            self.counters["accepted"] += drafts * rate

    def metrics(self) -> str:
        name = {"drafts": "drafts", "draft_tokens": "draft_tokens", "accepted": "accepted_tokens"}
        lines = [f'vllm:spec_decode_num_{name[k]}_total{{engine="0",model_name="canned"}} {v}' for k, v in self.counters.items()]
        lines += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="canned",position="{j}"}} {v}'
                  for j, v in enumerate(self.per_pos)]
        return "\n".join(lines) + "\n"


@contextmanager
def canned_server(behaviour: Behaviour | None = None) -> Iterator[tuple[str, CannedServer]]:
    """Serve on 127.0.0.1 from a background thread; yield (base URL, server)."""
    server = CannedServer(behaviour or Behaviour())
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, asyncio.base_events.Server] = {}

    async def start() -> None:
        holder["s"] = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(10)
    port = holder["s"].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        asyncio.run_coroutine_threadsafe(_shutdown(holder["s"], loop), loop)
        thread.join(5)
        loop.close()


async def _shutdown(server: asyncio.base_events.Server, loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the handlers still running (a hanging stream) before the loop stops, so none is left half-closed."""
    server.close()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop.stop()


def main() -> None:
    """`python -m mtpforge.testing.streamserver --itl 0.02`: serve until killed; prints the port first."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--itl", type=float, default=0.0)
    args = parser.parse_args()
    server = CannedServer(Behaviour(ttft=args.ttft, itl=args.itl))

    async def serve() -> None:
        s = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
        print(s.sockets[0].getsockname()[1], flush=True)
        await s.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

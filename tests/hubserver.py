"""A real HTTP server that serves checkpoint directories as a Hugging Face hub
would: `GET /{org}/{name}/resolve/{revision}/{file}`, with byte ranges.

It records every request (file and range) so tests can assert what a client
fetched, and can be told to drop the connection mid-body or to demand a token.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class HubState:
    repos: dict[str, Path] = field(default_factory=dict)  # "org/name" -> directory
    requests: list[tuple[str, int, int]] = field(default_factory=list)  # (file, begin, end) served
    drop_after: int | None = None  # close the connection after sending this many body bytes
    token: str | None = None


def serve(state: HubState) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # http.server's naming
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path)
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._status(401)
            if not m or m.group(1) not in state.repos:
                return self._status(404)
            path = state.repos[m.group(1)] / m.group(3)
            if not path.is_file():
                return self._status(404)
            data = path.read_bytes()
            begin, end, status = 0, len(data), 200
            rng = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            if rng:
                begin, end, status = int(rng.group(1)), min(int(rng.group(2)) + 1, len(data)), 206
            state.requests.append((m.group(3), begin, end))
            body = data[begin:end]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {begin}-{end - 1}/{len(data)}")
            self.end_headers()
            if state.drop_after is not None and len(body) > state.drop_after:
                self.wfile.write(body[: state.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def _status(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"

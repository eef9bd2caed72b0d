"""Misbehaving peers (issue 12, network): every read is bounded in time and size, every malformed answer is a
clean SourceError naming the URL, and a hub token never follows a redirect to another host.

Each peer is a real HTTP server on 127.0.0.1 whose handlers stall, trickle, flood or lie; every test is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mtpforge.checkpoint.http import MAX_DOCUMENT_BYTES, crosses_origin, http_get
from mtpforge.checkpoint.remote import RemoteRepo
from mtpforge.engine.metrics import served_model, spec_counters
from mtpforge.errors import SourceError
from mtpforge.verify.served import complete

Handler = Callable[[BaseHTTPRequestHandler], None]
MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


def reply(h: BaseHTTPRequestHandler, body: bytes, status: int = 200, **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    h.wfile.write(body)


@contextmanager
def peer(routes: dict[str, Handler], stop: threading.Event | None = None) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A server answering `routes` (path -> handler); yields its URL and the headers of each request.

    `stop` is set on the way out, so handlers that stall or trickle on it end with the test.
    """
    seen: list[dict[str, str]] = []
    stop = stop or threading.Event()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def handle_one(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            routes.get(self.path, lambda h: reply(h, b"", 404))(self)

        do_GET = do_POST = handle_one

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def stall(stop: threading.Event) -> Handler:
    return lambda h: stop.wait(30)  # accepts, never answers


def trickle(stop: threading.Event) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 30))
        h.end_headers()
        while not stop.wait(0.2):  # one byte at a time: every socket wait is short, the body never ends
            h.wfile.write(b"#")
            h.wfile.flush()
    return handle


def flood(status: int) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        block = b"x" * 65536
        try:
            for _ in range(4096):  # 256 MiB at most, unless the client stops reading first
                h.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        except OSError:
            pass
    return handle


def bench(cli, url: str, *args: str):  # type: ignore[no-untyped-def]
    return cli("bench", "--url", url, "--json", "--warmup", "0", "--concurrency", "1", "--num-requests", "1", *args)


# 1. time: a stalled or trickling peer ends the verb within its bounds


def test_a_stalled_metrics_page_ends_bench_with_exit_3_within_the_timeout(cli) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    with peer({"/v1/models": lambda h: reply(h, MODELS), "/metrics": stall(stop)}, stop) as (url, _):
        start = time.monotonic()
        r = bench(cli, url, "--timeout", "1", "--max-duration", "2")
        elapsed = time.monotonic() - start
    assert r.code == 3 and elapsed < 8, (r.code, elapsed)
    assert f"{url}/metrics: no answer within 1 s (timed out)" in r.err


def test_a_trickling_body_is_cut_at_twice_the_timeout() -> None:
    stop = threading.Event()
    with peer({"/metrics": trickle(stop)}, stop) as (url, _):
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"/metrics: the response took longer than 1 s \(trickling\)"):
            spec_counters(url, timeout=0.5)
        assert time.monotonic() - start < 5


def test_a_stalled_models_list_is_bounded_by_the_timeout() -> None:
    stop = threading.Event()
    with peer({"/v1/models": stall(stop)}, stop) as (url, _):
        start = time.monotonic()
        with pytest.raises(SourceError, match="timed out"):
            served_model(url, timeout=0.5)
        assert time.monotonic() - start < 4


# 2. malformed answers: SourceError (exit 3) naming the URL and what was wrong, never a traceback


def test_non_utf8_metrics_is_exit_3_naming_the_page(cli) -> None:  # type: ignore[no-untyped-def]
    page = b"vllm:spec_decode_num_drafts_total 3\n\xff\xfe\n"
    with peer({"/v1/models": lambda h: reply(h, MODELS), "/metrics": lambda h: reply(h, page)}) as (url, _):
        r = bench(cli, url, "--timeout", "2")
        with pytest.raises(SourceError, match=r"/metrics: not UTF-8 text \(byte 36"):
            spec_counters(url)
    assert r.code == 3 and f"Error: {url}/metrics: not UTF-8 text" in r.err and "Traceback" not in r.err


def test_a_counter_that_is_not_a_number_is_a_source_error() -> None:
    page = b"vllm:spec_decode_num_drafts_total 1.2.3\n"
    with peer({"/metrics": lambda h: reply(h, page)}) as (url, _):
        with pytest.raises(SourceError, match=r"counter value '1.2.3' is not a number"):
            spec_counters(url)


@pytest.mark.parametrize(("body", "what"), [
    (b"[1]", "expected {\"data\""), (b"{}", "expected {\"data\""), (b'{"data": []}', "expected {\"data\""),
    (b'{"data": [1]}', "no string id"), (b'{"data": [{"id": 7}]}', "no string id"), (b"<html>", "not a JSON document"),
    (b"\xff", "not a JSON document"),
])
def test_a_models_list_of_the_wrong_shape_is_exit_3(cli, body: bytes, what: str) -> None:  # type: ignore[no-untyped-def]
    with peer({"/v1/models": lambda h: reply(h, body)}) as (url, _):
        r = bench(cli, url, "--timeout", "2")
    assert r.code == 3 and f"{url}/v1/models: " in r.err and what in r.err and "Traceback" not in r.err


def sse_stream(*lines: bytes) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        reply(h, b"".join(b"data: " + line + b"\n\n" for line in lines), content_type="text/event-stream")
    return handle


@pytest.mark.parametrize(("line", "error"), [
    (b"not json", "bad stream: a data line is not JSON"),
    (b"\xff\xfe", "bad stream: a data line is not JSON"),
    (b"1", "bad stream: a data line is not a JSON object"),
    (b"[1]", "bad stream: a data line is not a JSON object"),
    (b'{"choices": [1]}', "bad stream: choices[0] is not a JSON object"),
    (b'{"choices": [{"text": "a"}], "usage": {"completion_tokens": "x"}}', "usage.completion_tokens is not a count"),
])
def test_non_json_sse_fails_the_request_not_the_verb(cli, line: bytes, error: str) -> None:  # type: ignore[no-untyped-def]
    routes = {"/v1/models": lambda h: reply(h, MODELS), "/v1/completions": sse_stream(line, b"[DONE]")}
    with peer(routes) as (url, _):
        r = bench(cli, url, "--timeout", "2")
    assert r.code == 1, r.err
    errors = json.loads(r.out)["runs"][0]["levels"][0]["errors"]
    assert [error in e for e in errors] == [True], errors


def test_a_completion_that_is_not_openai_json_is_a_source_error() -> None:
    with peer({"/v1/completions": lambda h: reply(h, b'{"choices": []}')}) as (url, _):
        with pytest.raises(SourceError, match=r"/v1/completions: not an OpenAI completion \(IndexError"):
            complete(url, [1, 2], 4, model="m")


# 3. size: error bodies and documents are capped, and the message says so


def test_an_endless_error_body_is_capped_at_1_mib(cli) -> None:  # type: ignore[no-untyped-def]
    with peer({"/v1/models": lambda h: reply(h, MODELS), "/v1/completions": flood(500)}) as (url, _):
        start = time.monotonic()
        r = bench(cli, url, "--timeout", "20")
        elapsed = time.monotonic() - start
    assert r.code == 1 and elapsed < 10
    (error,) = json.loads(r.out)["runs"][0]["levels"][0]["errors"]
    assert error.startswith("HTTP 500: ") and error.endswith("(error body over 1,048,576 bytes; not read further)")


def test_documents_are_capped_and_error_bodies_never_read() -> None:
    big = b" " * (MAX_DOCUMENT_BYTES + 1)
    with peer({"/big": lambda h: reply(h, big), "/err": flood(503)}) as (url, _):
        with pytest.raises(SourceError, match=r"/big: the response is larger than the 1,048,576-byte cap; not read"):
            http_get(f"{url}/big", {})
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"/err: HTTP 503"):
            http_get(f"{url}/err", {})
        assert time.monotonic() - start < 3


def test_a_server_that_ignores_the_range_is_refused_before_the_body() -> None:
    with peer({"/f": lambda h: reply(h, b"x" * 100)}) as (url, _):
        with pytest.raises(SourceError, match=r"/f: the server ignored the byte range \(HTTP 200\)"):
            http_get(f"{url}/f", {"Range": "bytes=0-7"})


# 4. credentials: dropped on a redirect that leaves the origin, kept within it


def test_the_hub_token_does_not_follow_a_redirect_to_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.dumps({"model_type": "qwen3_next"}).encode()
    with peer({"/org/m/resolve/main/config.json": lambda h: reply(h, config)}) as (cdn, cdn_seen):
        moved = {"/org/m/resolve/main/config.json": lambda h: reply(h, b"", 302, Location=f"{cdn}/org/m/resolve/main/config.json",
                                                                    Set_Cookie="s=1")}
        with peer(moved) as (hub, hub_seen):
            monkeypatch.setenv("HF_TOKEN", "hf_secret")
            assert RemoteRepo("org/m", endpoint=hub).json_file("config.json") == {"model_type": "qwen3_next"}
            http_get(f"{hub}/org/m/resolve/main/config.json", {"Cookie": "session=1", "Authorization": "Bearer hf_secret"})
    assert [s["authorization"] for s in hub_seen] == ["Bearer hf_secret"] * 2
    assert len(cdn_seen) == 2 and all("authorization" not in s and "cookie" not in s for s in cdn_seen), cdn_seen


def test_the_token_is_kept_on_a_redirect_within_the_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    routes: dict[str, Handler] = {"/org/m/resolve/main/config.json": lambda h: reply(h, b"", 307, Location="/blob/config.json"),
                                  "/blob/config.json": lambda h: reply(h, b"{}")}
    with peer(routes) as (hub, seen):
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        assert RemoteRepo("org/m", endpoint=hub).json_file("config.json") == {}
    assert [s["authorization"] for s in seen] == ["Bearer hf_secret"] * 2


def test_a_redirect_to_a_non_http_scheme_is_refused() -> None:
    with peer({"/x": lambda h: reply(h, b"", 302, Location="ftp://127.0.0.1/x")}) as (url, _):
        with pytest.raises(SourceError, match="HTTP 302"):
            http_get(f"{url}/x", {"Authorization": "Bearer t"})


@pytest.mark.parametrize(("old", "new", "crosses"), [
    ("https://huggingface.co/a", "https://huggingface.co/b", False),
    ("https://huggingface.co/a", "https://cdn-lfs.huggingface.co/b", True),
    ("http://127.0.0.1:80/a", "http://127.0.0.1:81/a", True),
    ("http://hub/a", "https://hub/a", False),  # an upgrade on the default ports, as requests allows
    ("https://hub/a", "http://hub/a", True),  # a downgrade
    ("https://HUB:443/a", "https://hub/b", False),
])
def test_what_counts_as_leaving_the_origin(old: str, new: str, crosses: bool) -> None:
    assert crosses_origin(old, new) is crosses


def test_an_engine_refusal_hints_at_the_engine_not_at_the_hub() -> None:
    with peer({"/metrics": lambda h: reply(h, b"no", 401), "/v1/models": lambda h: reply(h, b"no", 403)}) as (url, _):
        with pytest.raises(SourceError, match="HTTP 401") as metrics:
            spec_counters(url)
        with pytest.raises(SourceError, match="HTTP 403") as models:
            served_model(url)
    for e in (metrics.value, models.value):
        assert e.hint == "the server wants an API key (vLLM --api-key)"

"""bench against a canned server whose timings and failures are known exactly."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from mtpforge.testing.streamserver import Behaviour, canned_server


def run_bench(cli, url: str, *args: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    r = cli("bench", "--url", url, "--json", "--warmup", "0", *args)
    return r.code, json.loads(r.out) if r.out else {}


def test_latencies_are_what_the_server_did(cli) -> None:  # type: ignore[no-untyped-def]
    with canned_server(Behaviour(ttft=0.2, itl=0.02)) as (url, _):
        code, d = run_bench(cli, url, "--concurrency", "2", "--num-requests", "4", "--output-len", "10")
    assert code == 0
    level = d["runs"][0]["levels"][0]
    assert level["completed"] == 4 and level["output_tokens"] == 40
    # Only floors: the server waits this long before sending, however loaded the machine (the exact figures: below).
    assert level["ttft_s"]["p50"] >= 0.2 - 1e-3 and level["latency_s"]["p50"] >= 0.2 + 9 * 0.02 - 1e-3


def sse(*docs: object) -> bytes:
    """Server-sent events in HTTP chunks, as vLLM writes them."""
    out = b""
    for doc in docs:
        data = f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
        out += f"{len(data):x}\r\n".encode() + data + b"\r\n"
    return out


def test_times_are_taken_when_each_event_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arithmetic on a scripted clock: first token at 0.2 s, then one every 20 ms, [DONE] with the tenth."""
    from types import SimpleNamespace

    from mtpforge.bench import client
    from mtpforge.bench.sweep import summarise
    from mtpforge.cli.render import render_bench

    clock = [0.0]
    monkeypatch.setattr(client, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    results = []
    for _ in range(4):
        loop = asyncio.new_event_loop()
        result = client.StreamResult()
        protocol = client._SseProtocol(result, 0.0, loop.create_future())
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        protocol.data_received(head[:20])  # packets split anywhere
        protocol.data_received(head[20:])
        for i in range(10):
            clock[0] = 0.2 + 0.02 * i
            event = sse({"choices": [{"index": 0, "text": "tok"}]})
            protocol.data_received(event[:7])
            protocol.data_received(event[7:])
        usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 10}}
        protocol.data_received(sse(usage, "[DONE]") + b"0\r\n\r\n")
        assert protocol.done.done() and protocol.done.exception() is None
        loop.close()
        result.ok = True
        results.append(result)
    level = summarise(results, 2.0, 2, None)
    assert level["completed"] == 4 and level["output_tokens"] == 40 and level["output_tokens_per_s"] == 20.0
    assert level["ttft_s"] == {"mean": 0.2, "p50": 0.2, "p90": 0.2, "p99": 0.2}
    assert level["itl_s"] == {"mean": 0.02, "p50": 0.02, "p90": 0.02, "p99": 0.02}
    assert level["tpot_s"]["p50"] == 0.02  # the 9 gaps over the 9 tokens after the first: the ITL again
    assert level["latency_s"]["p50"] == pytest.approx(0.2 + 9 * 0.02)  # taken when [DONE] arrived
    doc = {"runs": [{"url": "http://127.0.0.1:8000", "model": "m", "levels": [level]}]}
    row = render_bench(doc).splitlines()[2].split()
    # conc, ok/sent, tok/s, TTFT p50 and p99, TPOT p50, ITL p99 (ms), acceptance
    assert row == ["2", "4/4", "20.0", "200.0", "200.0", "20.0", "20.0", "-"]


def test_concurrency_is_held_and_not_exceeded(cli) -> None:  # type: ignore[no-untyped-def]
    with canned_server(Behaviour(itl=0.01)) as (url, server):
        code, d = run_bench(cli, url, "--concurrency", "8", "--num-requests", "24", "--output-len", "8")
    assert code == 0 and server.max_active == 8
    assert d["runs"][0]["levels"][0]["completed"] == 24


def test_mtp_events_count_tokens_from_usage_and_acceptance_from_metrics(cli) -> None:  # type: ignore[no-untyped-def]
    with canned_server(Behaviour(tokens_per_event=3, acceptance=(0.9, 0.6, 0.3))) as (url, _server):
        code, d = run_bench(cli, url, "--concurrency", "1,2", "--num-requests", "4", "--output-len", "12")
    assert code == 0
    for level in d["runs"][0]["levels"]:
        assert level["output_tokens"] == 4 * 12  # 4 events of 3 tokens each; the usage count wins
        spec = level["spec_decode"]
        assert spec["drafts"] == 4 * 4  # this level's requests only, not the running total
        assert spec["per_position"] == pytest.approx([0.9, 0.6, 0.3])
        assert spec["mean_acceptance_length"] == pytest.approx(2.8)


@pytest.mark.parametrize(("behaviour", "message"), [
    (Behaviour(fail_after=3), "stream ended before [DONE] after 3 events"),
    (Behaviour(status=503), "HTTP 503"),
    (Behaviour(error_event_after=2), "server error mid-stream"),
])
def test_failed_streams_are_counted_with_their_reason_and_exit_1(cli, behaviour: Behaviour, message: str) -> None:  # type: ignore[no-untyped-def]
    with canned_server(behaviour) as (url, _):
        code, d = run_bench(cli, url, "--concurrency", "2", "--num-requests", "4", "--output-len", "8")
    level = d["runs"][0]["levels"][0]
    assert code == 1 and level["failed"] == 4 and level["completed"] == 0
    assert [message in error for error in level["errors"]] == [True]


def test_a_server_that_hangs_is_bounded_by_the_timeouts(cli) -> None:  # type: ignore[no-untyped-def]
    with canned_server(Behaviour(hang=True)) as (url, _):
        start = time.monotonic()
        code, d = run_bench(cli, url, "--concurrency", "4", "--num-requests", "8", "--timeout", "0.3")
        elapsed = time.monotonic() - start
    assert code == 1 and elapsed < 5
    assert list(d["runs"][0]["levels"][0]["errors"]) == ["timed out after 0.3 s"]
    with canned_server(Behaviour(itl=0.05)) as (url, server):
        code, d = run_bench(cli, url, "--concurrency", "1", "--num-requests", "100", "--output-len", "4", "--max-duration", "0.5")
    assert code == 0 and 1 <= d["runs"][0]["levels"][0]["requests"] < 10 and server.completions < 10


def test_compare_reports_ratios_and_writes_json_and_png(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with canned_server(Behaviour(itl=0.002, tokens_per_event=2)) as (fast, _), canned_server(Behaviour(itl=0.01)) as (slow, _):
        code, d = run_bench(cli, fast, "--compare", slow, "--concurrency", "1,2", "--num-requests", "4", "--output-len", "16",
                            "--out", str(tmp_path / "b"))
    assert code == 0 and [r["concurrency"] for r in d["comparison"]] == [1, 2]
    for row in d["comparison"]:
        assert row["output_tokens_per_s"] > 2 and row["tpot_p50"] < 0.5
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["comparison"] == d["comparison"]
    assert (tmp_path / "b" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_without_matplotlib_writes_the_json_and_says_how_to_get_the_chart(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a core install: import matplotlib raises ImportError
    out = tmp_path / "b"
    with canned_server() as (url, _):
        r = cli("bench", "--url", url, "--warmup", "0", "--concurrency", "1", "--num-requests", "2", "--output-len", "4",
                "--out", str(out))
    assert r.code == 0, r.err
    assert f"wrote {out / 'bench.json'}" in r.out and "bench.png" not in r.out
    assert r.err == (f"warning: {out / 'bench.png'} not written: "
                     "the chart needs matplotlib: pip install 'mtpforge[torch]' (or pip install matplotlib)\n")
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]
    assert json.loads((out / "bench.json").read_text())["runs"][0]["levels"][0]["completed"] == 2


def test_prompts_are_random_ids_of_the_asked_length_or_the_users_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with canned_server() as (url, server):
        run_bench(cli, url, "--concurrency", "1", "--num-requests", "3", "--input-len", "50", "--output-len", "2")
        assert [len(p) for p in server.prompts] == [50, 50, 50] and all(isinstance(t, int) for t in server.prompts[0])
        (tmp_path / "p.txt").write_text("first prompt\nsecond prompt\n")
        server.prompts.clear()
        run_bench(cli, url, "--concurrency", "1", "--num-requests", "3", "--output-len", "2",
                  "--prompts", str(tmp_path / "p.txt"))
        assert server.prompts == ["first prompt", "second prompt", "first prompt"]


def test_remote_urls_need_consent_and_a_dead_server_is_a_clear_error(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("bench", "--url", "http://10.1.2.3:8000")
    assert r.code == 2 and "--allow-remote" in r.err
    assert r.err.endswith("Error: 10.1.2.3 is not this machine: bench loads only loopback servers by default\n"
                          "hint: add --allow-remote if you own that server and mean to load it\n")
    r = cli("bench", "--url", "http://127.0.0.1:9", "--concurrency", "1")
    assert r.code == 3 and "/v1/models" in r.err
    assert "Error: http://127.0.0.1:9: no model listed at /v1/models (http://127.0.0.1:9/v1/models: connection failed" in r.err
    assert r.err.endswith("\nhint: is an OpenAI-compatible server running there?\n")
    r = cli("bench", "--url", "http://127.0.0.1:9", "--concurrency", "0")
    assert r.code == 2 and r.err.endswith("Error: Invalid value for '--concurrency': 0 is out of range: "
                                          "each level must be an integer from 1 to 4096.\n")

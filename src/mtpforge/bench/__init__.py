"""`mtpforge bench`: load any OpenAI-compatible server at a sweep of concurrencies.

Streaming `/v1/completions` requests with fixed input/output lengths (random
token-id prompts, EOS ignored, so every level decodes the same work) or the
user's prompt file; a warm-up first; TTFT, TPOT, inter-token latency and
throughput per level; the engine's spec-decode counters turned into
acceptance per position. `compare_url` runs the same sweep on a second server
(MTP off, say) and reports the ratios. Loopback only unless told otherwise,
and bounded: a request count per level, a per-request time-out and a
per-level time limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mtpforge.bench.sweep import Level, run_level
from mtpforge.engine.bounds import CONCURRENCY, COUNT, POSITIVE, REQUESTS, SECONDS, check
from mtpforge.engine.metrics import served_model
from mtpforge.errors import SourceError, UsageError
from mtpforge.prompts import load_prompts

# Token ids below 256 exist in every byte-level BPE vocabulary (Qwen's included), so random prompts are valid anywhere.
PROMPT_TOKEN_RANGE = (10, 256)


@dataclass(frozen=True)
class BenchOptions:
    concurrencies: tuple[int, ...] = (1, 4, 16)
    num_requests: int = 32  # per level
    input_len: int = 256
    output_len: int = 128
    prompts: str | None = None  # a prompt file instead of random token ids
    warmup: int = 2
    timeout: float = 120.0  # per request
    max_duration: float = 300.0  # per level
    model: str | None = None
    allow_remote: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        """The ranges `mtpforge bench` enforces (engine/bounds.py), so the Python API refuses the same values."""
        if not self.concurrencies:
            raise UsageError("--concurrency names no level", hint="--concurrency 1,4,16")
        for c in self.concurrencies:
            check("--concurrency", c, CONCURRENCY)
        check("--num-requests", self.num_requests, REQUESTS)
        check("--input-len", self.input_len, POSITIVE)
        check("--output-len", self.output_len, POSITIVE)
        check("--warmup", self.warmup, COUNT)
        check("--timeout", self.timeout, SECONDS)
        check("--max-duration", self.max_duration, SECONDS)


def bench(url: str, options: BenchOptions, *, compare_url: str | None = None) -> dict[str, Any]:
    """Run the sweep on `url` (and `compare_url`); the `mtpforge.bench/1` document.

    Raises:
        UsageError: a non-loopback URL without `allow_remote` (ranges are checked by `BenchOptions`).
        SourceError: the server does not answer `/v1/models` as OpenAI does, or its `/metrics` is malformed or stalls.
    """
    urls = [url] + ([compare_url] if compare_url else [])
    for u in urls:
        _check_url(u, options.allow_remote)
    runs = [_sweep(u.rstrip("/"), options) for u in urls]
    doc: dict[str, Any] = {"schema": "mtpforge.bench/1",
                           "options": {**options.__dict__, "concurrencies": list(options.concurrencies)}, "runs": runs}
    if compare_url:
        doc["comparison"] = compare(runs[0], runs[1])
    return doc


def _sweep(url: str, options: BenchOptions) -> dict[str, Any]:
    try:
        model = options.model or served_model(url, timeout=options.timeout)
    except SourceError as e:
        raise SourceError(f"{url}: no model listed at /v1/models ({e})",
                          hint="is an OpenAI-compatible server running there?") from e
    bodies = _bodies(model, options)

    async def levels() -> list[dict[str, Any]]:
        warm = Level(1, bodies[: options.warmup], options.timeout, options.max_duration)
        await run_level(url, warm)
        return [await run_level(url, Level(c, bodies, options.timeout, options.max_duration)) for c in options.concurrencies]

    return {"url": url, "model": model, "levels": asyncio.run(levels())}


def _bodies(model: str, options: BenchOptions) -> list[dict[str, Any]]:
    rng = random.Random(options.seed)
    if options.prompts:
        texts = load_prompts(options.prompts)
        prompts: list[Any] = [texts[i % len(texts)] for i in range(options.num_requests)]
    else:
        prompts = [[rng.randrange(*PROMPT_TOKEN_RANGE) for _ in range(options.input_len)] for _ in range(options.num_requests)]
    return [{"model": model, "prompt": p, "max_tokens": options.output_len, "temperature": 0, "ignore_eos": True}
            for p in prompts]


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Per concurrency: first run over second for throughput, TTFT and TPOT medians."""
    rows = []
    for la, lb in zip(a["levels"], b["levels"], strict=True):
        rows.append({"concurrency": la["concurrency"],
                     "output_tokens_per_s": _ratio(la["output_tokens_per_s"], lb["output_tokens_per_s"]),
                     "ttft_p50": _ratio(_p50(la, "ttft_s"), _p50(lb, "ttft_s")),
                     "tpot_p50": _ratio(_p50(la, "tpot_s"), _p50(lb, "tpot_s"))})
    return rows


def _p50(level: dict[str, Any], key: str) -> float | None:
    return level[key]["p50"] if level[key] else None


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def _check_url(url: str, allow_remote: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url {url!r} must be http://HOST:PORT", hint="--url http://127.0.0.1:8000")
    if allow_remote:
        return
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"{host} is not this machine: bench loads only loopback servers by default",
                         hint="add --allow-remote if you own that server and mean to load it")


def write_outputs(doc: dict[str, Any], out: Path) -> tuple[list[Path], list[str]]:
    """bench.json and, where matplotlib is installed, bench.png into `out` (created).

    Returns:
        The files written, and a warning for each file left out (the chart on a core install).
    """
    from mtpforge.bench.chart import chart_missing, plot

    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    if (missing := chart_missing()) is not None:
        return [out / "bench.json"], [f"{out / 'bench.png'} not written: {missing}"]
    plot(doc, out / "bench.png")
    return [out / "bench.json", out / "bench.png"], []

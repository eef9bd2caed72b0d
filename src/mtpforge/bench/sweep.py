"""Run a fixed set of requests at one concurrency and summarise them.

C workers pull from one queue, so at most C streams are open at any time and
the level ends when the queue is empty or `max_duration` has passed (then no
new request starts; the ones in flight finish or time out). The engine's
speculative-decoding counters are read from `/metrics` before and after the
level, so acceptance covers exactly this level's traffic.

Every wait is bounded: each request by `timeout`, each `/metrics` read by
`min(timeout, METRICS_TIMEOUT_SEC)` (twice that for a page that trickles), and
the level's clock starts before the first read, so a level ends within
`max_duration` plus one request's and one read's bounds. A server without
`/metrics` (404) gives no acceptance; one whose page stalls or is malformed is
a `SourceError`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtpforge.bench.client import StreamResult, stream_completion
from mtpforge.engine.metrics import METRICS_TIMEOUT_SEC, spec_counters

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Level:
    concurrency: int
    requests: list[dict[str, Any]]  # request bodies (model, prompt, max_tokens, ...)
    timeout: float
    max_duration: float


async def run_level(base_url: str, level: Level) -> dict[str, Any]:
    """Send `level.requests` with `level.concurrency` streams open; the level's summary."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in level.requests:
        queue.put_nowait(body)
    results: list[StreamResult] = []
    deadline = time.perf_counter() + level.max_duration  # the /metrics read below counts against the level

    async def worker() -> None:
        while not queue.empty() and time.perf_counter() < deadline:
            body = queue.get_nowait()
            results.append(await stream_completion(f"{base_url}/v1/completions", body, timeout=level.timeout))

    read_timeout = min(level.timeout, METRICS_TIMEOUT_SEC)
    before = await asyncio.to_thread(spec_counters, base_url, timeout=read_timeout, missing_ok=True)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(level.concurrency)))
    wall = time.perf_counter() - start
    after = await asyncio.to_thread(spec_counters, base_url, timeout=read_timeout, missing_ok=True)
    return summarise(results, wall, level.concurrency, acceptance(before, after))


def summarise(results: list[StreamResult], wall: float, concurrency: int, spec: dict[str, Any] | None) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error or "unknown"] = errors.get(r.error or "unknown", 0) + 1
    tokens = sum(r.output_tokens for r in ok)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": errors,
        "duration_s": round(wall, 4),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "ttft_s": _stats([r.ttft for r in ok if r.ttft is not None]),
        "tpot_s": _stats([t for r in ok if (t := r.tpot) is not None]),
        "itl_s": _stats([gap for r in ok for gap in r.itl]),
        "latency_s": _stats([r.latency for r in ok if r.latency is not None]),
        "spec_decode": spec,
    }


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values)
    return {"mean": round(float(arr.mean()), 6), **{f"p{p}": round(float(np.percentile(arr, p)), 6) for p in PERCENTILES}}


def acceptance(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """Acceptance per draft position and mean acceptance length from two counter snapshots."""
    if not before or not after or "drafts" not in after:
        return None
    diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    drafts = diff.get("drafts", 0.0)
    if drafts <= 0:
        return {"drafts": 0, "per_position": [], "mean_acceptance_length": None}
    positions = sorted(int(k[len("accepted_pos"):]) for k in diff if k.startswith("accepted_pos"))
    return {
        "drafts": int(drafts),
        "draft_tokens": int(diff.get("draft_tokens", 0)),
        "accepted_tokens": int(diff.get("accepted", 0)),
        "per_position": [round(diff[f"accepted_pos{j}"] / drafts, 4) for j in positions],
        # The verified token always lands; each accepted draft adds one more.
        "mean_acceptance_length": round(1 + diff.get("accepted", 0.0) / drafts, 3),
    }

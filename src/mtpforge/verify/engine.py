"""Measure MTP acceptance through a live vLLM server: its `/metrics` counters.

vLLM v1 exports `vllm:spec_decode_num_drafts_total`, `..._num_draft_tokens_total`,
`..._num_accepted_tokens_total` and `..._num_accepted_tokens_per_pos_total{position="j"}`
(`vllm/v1/spec_decode/metrics.py`). The counters are read before and after
the prompts, so other traffic before the run does not count.
"""

from __future__ import annotations

import json
import re
import urllib.request

from typing import TYPE_CHECKING

from mtpforge.surgery.sources import SourceError, http_get

if TYPE_CHECKING:  # bench reads the counters without torch; only measure_engine builds an Acceptance
    from mtpforge.verify.acceptance import Acceptance

_COUNTER = re.compile(r"^vllm:spec_decode_num_(\w+?)_total(\{[^}]*\})? ([\d.eE+-]+)$")


def spec_counters(url: str) -> dict[str, float]:
    """`drafts`, `draft_tokens`, `accepted` and `accepted_pos{j}` summed over the server's engines."""
    _, _, body = http_get(f"{url.rstrip('/')}/metrics", {})
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        m = _COUNTER.match(line)
        if not m:
            continue
        key = {"drafts": "drafts", "draft_tokens": "draft_tokens", "accepted_tokens": "accepted"}.get(m.group(1))
        if m.group(1) == "accepted_tokens_per_pos":
            pos = re.search(r'position="(\d+)"', m.group(2) or "")
            key = f"accepted_pos{pos.group(1)}" if pos else None
        if key:
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def complete(url: str, prompt: list[int], max_tokens: int, model: str | None = None) -> str:
    """A greedy completion of a token-id prompt that runs to `max_tokens` (EOS ignored)."""
    body = {"model": model or served_model(url), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())["choices"][0]["text"]
    except OSError as e:
        raise SourceError(f"{url}: completion failed: {e}", hint="is the server up and serving this model?") from e


def served_model(url: str) -> str:
    _, _, body = http_get(f"{url.rstrip('/')}/v1/models", {})
    return json.loads(body)["data"][0]["id"]


def measure_engine(url: str, prompts: list[list[int]], new_tokens: int, k: int) -> Acceptance:
    """Acceptance per position as the server counts it over greedy completions of `prompts`."""
    from mtpforge.verify.acceptance import Acceptance

    model = served_model(url)
    before = spec_counters(url)
    for prompt in prompts:
        complete(url, prompt, new_tokens, model)
    after = spec_counters(url)
    if "drafts" not in after:
        raise SourceError(f"{url}: /metrics has no vllm:spec_decode counters", hint="start the server with --speculative-config (MTP)")
    diff = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    result = Acceptance(k)
    result.drafts = int(diff.get("drafts", 0))
    result.accepted_per_pos = [int(diff.get(f"accepted_pos{j}", 0)) for j in range(k)]
    result.histogram = []  # the server does not export it
    return result

"""What a running OpenAI-compatible engine says about itself: the served model
and vLLM's speculative-decoding counters on `/metrics`.

vLLM v1 exports `vllm:spec_decode_num_drafts_total`, `..._num_draft_tokens_total`,
`..._num_accepted_tokens_total` and `..._num_accepted_tokens_per_pos_total{position="j"}`
(`vllm/v1/spec_decode/metrics.py`). torch-free: `bench` and `verify` both read them.
"""

from __future__ import annotations

import json
import re

from mtpforge.checkpoint.http import http_get

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


def served_model(url: str) -> str:
    _, _, body = http_get(f"{url.rstrip('/')}/v1/models", {})
    return json.loads(body)["data"][0]["id"]

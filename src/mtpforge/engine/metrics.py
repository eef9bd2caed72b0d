"""What a running OpenAI-compatible engine says about itself: the served model
and vLLM's speculative-decoding counters on `/metrics`.

vLLM v1 exports `vllm:spec_decode_num_drafts_total`, `..._num_draft_tokens_total`,
`..._num_accepted_tokens_total` and `..._num_accepted_tokens_per_pos_total{position="j"}`
(`vllm/v1/spec_decode/metrics.py`). torch-free: `bench` and `verify` both read them.

Both reads are bounded (`timeout`, and `MAX_METRICS_BYTES` / 1 MiB of body); a page
that is not UTF-8 text, a counter that is not a number or a model list that is not
OpenAI's shape is a `SourceError` naming the URL and what was wrong.
"""

from __future__ import annotations

import json
import math
import re

from mtpforge.checkpoint.http import HTTP_TIMEOUT_SEC, http_get
from mtpforge.errors import SourceError

# vLLM's page is ~100-300 KB (histograms for every engine); 16 MiB leaves room for many engines and LoRAs.
MAX_METRICS_BYTES = 16 << 20
METRICS_TIMEOUT_SEC = 10.0
_COUNTER = re.compile(r"^vllm:spec_decode_num_(\w+?)_total(\{[^}]*\})? ([\d.eE+-]+)$")
_HINT = "is an OpenAI-compatible server (vLLM) running there?"


def spec_counters(url: str, *, timeout: float = METRICS_TIMEOUT_SEC, missing_ok: bool = False) -> dict[str, float]:
    """`drafts`, `draft_tokens`, `accepted` and `accepted_pos{j}` summed over the server's engines.

    With `missing_ok`, a server without `/metrics` (HTTP 404) gives no counters.
    """
    page = f"{url.rstrip('/')}/metrics"
    status, _, body = http_get(page, {}, timeout=timeout, max_bytes=MAX_METRICS_BYTES, missing_ok=missing_ok)
    if status == 404:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{page}: not UTF-8 text (byte {e.start}: {body[e.start:e.start + 1]!r})", hint=_HINT) from e
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _COUNTER.match(line)
        if not m:
            continue
        key = {"drafts": "drafts", "draft_tokens": "draft_tokens", "accepted_tokens": "accepted"}.get(m.group(1))
        if m.group(1) == "accepted_tokens_per_pos":
            pos = re.search(r'position="(\d+)"', m.group(2) or "")
            key = f"accepted_pos{pos.group(1)}" if pos else None
        if key:
            try:
                value = float(m.group(3))
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise SourceError(f"{page}: counter value {m.group(3)!r} is not a number: {line[:200]!r}", hint=_HINT)
            out[key] = out.get(key, 0.0) + value
    return out


def served_model(url: str, *, timeout: float = HTTP_TIMEOUT_SEC) -> str:
    """The first model `/v1/models` lists (OpenAI's `{"data": [{"id": ...}]}`)."""
    page = f"{url.rstrip('/')}/v1/models"
    _, _, body = http_get(page, {}, timeout=timeout)
    try:
        doc = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError included
        raise SourceError(f"{page}: not a JSON document ({e})", hint=_HINT) from e
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise SourceError(f"{page}: expected {{\"data\": [{{\"id\": ...}}, ...]}}, got {body[:120]!r}", hint=_HINT)
    first = data[0]
    if not isinstance(first, dict) or not isinstance(first.get("id"), str) or not first["id"]:
        raise SourceError(f"{page}: the first entry of data has no string id (got {json.dumps(first)[:120]})", hint=_HINT)
    return first["id"]

"""Measure MTP acceptance through a live vLLM server: greedy completions of the
prompts, and the server's speculative-decoding counters (`engine.metrics`) read
before and after them, so other traffic before the run does not count.
"""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING

from mtpforge.engine.metrics import served_model, spec_counters
from mtpforge.errors import SourceError

if TYPE_CHECKING:  # bench reads the counters without torch; only measure_engine builds an Acceptance
    from mtpforge.verify.acceptance import Acceptance


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


def measure_engine(url: str, prompts: list[list[int]], new_tokens: int, k: int) -> Acceptance:
    """Acceptance per position as the server counts it over greedy completions of `prompts`."""
    from mtpforge.verify.acceptance import Acceptance

    model = served_model(url)
    before = spec_counters(url)
    for prompt in prompts:
        complete(url, prompt, new_tokens, model)
    after = spec_counters(url)
    if "drafts" not in after:
        raise SourceError(f"{url}: /metrics has no vllm:spec_decode counters",
                          hint="start the server with --speculative-config (MTP)")
    diff = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    result = Acceptance(k)
    result.drafts = int(diff.get("drafts", 0))
    result.accepted_per_pos = [int(diff.get(f"accepted_pos{j}", 0)) for j in range(k)]
    result.histogram = []  # the server does not export it
    return result

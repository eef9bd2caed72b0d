"""Measure MTP acceptance through a live vLLM server: greedy completions of the
prompts, and the server's speculative-decoding counters (`engine.metrics`) read
before and after them, so other traffic before the run does not count.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mtpforge.checkpoint.http import http_request
from mtpforge.engine.metrics import served_model, spec_counters
from mtpforge.errors import SourceError

if TYPE_CHECKING:
    from mtpforge.verify.stats import Acceptance


COMPLETION_TIMEOUT_SEC = 300  # per socket wait; a completion that trickles is cut at twice that


def complete(url: str, prompt: list[int], max_tokens: int, model: str | None = None) -> str:
    """A greedy completion of a token-id prompt that runs to `max_tokens` (EOS ignored); bounded in time and size."""
    hint = "is the server up and serving this model?"
    endpoint, raw, choice = _greedy_choice(url, prompt, max_tokens, model, {}, hint)
    text = choice.get("text") if isinstance(choice, dict) else None
    if not isinstance(text, str):
        raise SourceError(f"{endpoint}: choices[0].text is not a string: {raw[:120]!r}", hint=hint)
    return text


def complete_ids(url: str, prompt: list[int], max_tokens: int, model: str | None = None) -> list[int]:
    """The token ids of a greedy completion of `prompt` (vLLM's `return_token_ids`): the very text the engine scored."""
    hint = "is the server up and serving this model? (token ids need vLLM >= 0.10.2's return_token_ids)"
    endpoint, raw, choice = _greedy_choice(url, prompt, max_tokens, model, {"return_token_ids": True}, hint)
    ids = choice.get("token_ids") if isinstance(choice, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise SourceError(f"{endpoint}: choices[0].token_ids is not a list of token ids: {raw[:120]!r}", hint=hint)
    return ids


def _greedy_choice(url: str, prompt: list[int], max_tokens: int, model: str | None, extra: dict[str, Any],
                   hint: str) -> tuple[str, bytes, Any]:
    """POST one greedy /v1/completions request; the endpoint, the raw reply and its `choices[0]`."""
    body = {"model": model or served_model(url), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            **extra}
    endpoint = f"{url.rstrip('/')}/v1/completions"
    try:
        _, _, raw = http_request(endpoint, {"Content-Type": "application/json"}, data=json.dumps(body).encode(),
                                 timeout=COMPLETION_TIMEOUT_SEC)
    except SourceError as e:
        raise SourceError(f"{url}: completion failed: {e}", hint=e.hint or hint) from e
    try:
        return endpoint, raw, json.loads(raw)["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise SourceError(f"{endpoint}: not an OpenAI completion ({type(e).__name__}: {e}): {raw[:120]!r}", hint=hint) from e


def measure_engine(url: str, prompts: list[list[int]], new_tokens: int, k: int,
                   sequences: list[tuple[int, list[int]]] | None = None) -> Acceptance:
    """Acceptance per position as the server counts it over greedy completions of `prompts`.

    With `sequences` (a list), each (prompt length, prompt + completion ids) the engine produced is appended to it.
    """
    from mtpforge.verify.stats import Acceptance  # torch-free: the engine-only path runs without the reference runtime

    model = served_model(url)
    before = spec_counters(url)
    for prompt in prompts:
        if sequences is None:
            complete(url, prompt, new_tokens, model)
        else:
            sequences.append((len(prompt), list(prompt) + complete_ids(url, prompt, new_tokens, model)))
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

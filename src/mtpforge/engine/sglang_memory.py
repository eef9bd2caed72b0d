"""SGLang's pool sizing for hybrid (Gated DeltaNet + attention) models, as `plan --engine sglang` reports it.

From SGLang's KV cache configurator (python/sglang/srt/model_executor/, `_profile_available_bytes` and
`_handle_max_mamba_cache`, read for v0.5.x):

* rest = free memory before loading x `--mem-fraction-static` - the loaded weights (target and draft);
  the (1 - fraction) share is left for activations and CUDA graphs.
* The Mamba / GDN state slots take `rest x r / (1 + r)` (`--mamba-full-memory-ratio` r = 0.9); with speculative
  decoding that budget also holds the per-request intermediate states of the k + 1 draft tokens.
  A slot is one sequence's conv state (`kernel - 1` columns, no widening for the drafts) and float32 recurrent state.
* The rest is a KV pool with a page of one token: tokens = pool / (KV bytes per token x layers holding KV),
  the NEXTN draft layer counted with the trunk's (its pool has as many tokens).
* Running requests are bounded by slots / 3 (`MAMBA_CACHE_SIZE_MAX_RUNNING_REQUESTS_RATIO`, radix cache on) and by
  the KV tokens a full-context request needs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mtpforge.units import GIB

if TYPE_CHECKING:
    from mtpforge.engine.memory import MemoryPlan, PlanRequest

MAMBA_FULL_MEMORY_RATIO = 0.9
SLOTS_PER_RUNNING_REQUEST = 3


def sglang_plan(*, path: str, request: PlanRequest, shown_request: dict[str, Any], weights: dict[str, int],
                weights_loaded: int, reserve: int, kv_per_token: int, n_attn: int, n_gdn: int, k: int, max_len: int,
                state: int) -> MemoryPlan:
    """SGLang's figures for one GPU (see the module docstring); the MemoryPlan's block fields describe a page of 1 token."""
    from mtpforge.engine.memory import MemoryPlan

    per_request_state = state * n_gdn
    free_before = request.gpu_memory - reserve
    rest = int(free_before * request.util) - weights_loaded
    r = MAMBA_FULL_MEMORY_RATIO
    budget = max(0, rest) * r / (1 + r)
    draft_tokens = k + 1 if k else 0
    slots = int(budget // (per_request_state * (1 + draft_tokens / SLOTS_PER_RUNNING_REQUEST)))
    running = slots // SLOTS_PER_RUNNING_REQUEST
    intermediate = per_request_state * running * draft_tokens
    kv_pool = int(max(0, rest) - slots * per_request_state - intermediate)
    if request.kv_cache_memory is not None:  # a given pool (as for vLLM's --kv-cache-memory-bytes)
        kv_pool = request.kv_cache_memory
    kv_tokens = max(0, kv_pool) // (kv_per_token * n_attn)
    concurrency = min(kv_tokens / max_len, running)
    problems: list[str] = []
    if rest <= 0 and request.kv_cache_memory is None:
        problems.append(f"weights ({weights_loaded / GIB:.2f} GiB) exceed --mem-fraction-static {request.util} of the "
                        f"{free_before / GIB:.2f} GiB free before loading")
    elif concurrency < 1:
        problems.append(f"one request at --max-model-len {max_len} needs {max_len} KV tokens; the pool has {kv_tokens}")
    safe = max(0, math.floor(concurrency))
    if request.max_num_seqs is not None and request.max_num_seqs > safe and not problems:
        problems.append(f"--max-running-requests {request.max_num_seqs} exceeds the {concurrency:.2f} requests that fit "
                        "at full context")
    return MemoryPlan(
        path=path, request=shown_request, weights=weights, weights_loaded=weights_loaded, kv_pool=kv_pool,
        kv_bytes_per_token_per_layer=kv_per_token, attention_layers=n_attn, gdn_layers=n_gdn, gdn_state_per_layer=state,
        gdn_state_per_sequence=per_request_state, block_size=1, group_size=n_attn, groups=1, num_blocks=kv_tokens,
        kv_tokens=kv_tokens, max_model_len=max_len, blocks_per_request=max_len, max_concurrency=round(concurrency, 2),
        longest_context_that_fits=kv_tokens, safe_max_num_seqs=safe, problems=problems, engine="sglang",
        gdn_state_slots=slots,
    )

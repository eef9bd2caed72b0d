"""`mtpforge plan` for attention-only families (DeepSeek-V3 / R1, GLM-4.5 / 5, MiMo): no Gated DeltaNet state.

Every decoder layer holds a KV cache, and so does each MTP layer when drafting.
The bytes one token takes in one layer come from the family
(`Family.kv_bytes_per_token`): GQA stores K and V, `2 x kv_heads / TP x head_dim`;
MLA stores one latent, `kv_lora_rank + qk_rope_head_dim`, on every GPU (vLLM's
`MLAAttentionSpec`: one KV head, never split by tensor parallelism), plus the
DSA indexer's FP8 key cache where there is one. With a single cache type vLLM
keeps one group of all layers: a block costs `page x layers`, and a request at
full context needs `ceil(len / block)` blocks. The block size is the attention
kernel's (`Family.kv_block_size`): 16 for FlashAttention, 64 for FlashMLA
(`get_supported_kernel_block_sizes` in vllm/v1/attention/backends/mla/flashmla.py).

SGLang (`--engine sglang`, engine/sglang_memory.py) takes `--mem-fraction-static`
of the memory free before loading, minus the weights, as its token pool (no
Mamba share to set aside here), in pages of one token.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.families import EMBEDDINGS, MTP, TRUNK, VISION, Family
from mtpforge.units import GIB


def attention_plan(ckpt: Checkpoint, family: Family, request: Any, *, path: str, default_reserve: int,
                   kv_dtype_bytes: dict[str, int | None]) -> Any:
    """The `MemoryPlan` of an attention-only checkpoint (`request` is a `PlanRequest`)."""
    from mtpforge.engine.memory import MemoryPlan  # the plan's shape is memory.py's; imported late (memory imports us)

    config = ckpt.config
    tp = request.tensor_parallel
    groups = inspect_checkpoint(ckpt).groups
    weights = {g: groups[g].bytes for g in (TRUNK, EMBEDDINGS, MTP, VISION)}
    k = request.spec_tokens if request.spec_tokens is not None else (3 if weights[MTP] > 0 else 0)
    loaded = weights[TRUNK] + weights[EMBEDDINGS] + (weights[MTP] if k else 0)
    weights_loaded = math.ceil(loaded / tp)

    model_bytes = DTYPE_BITS[family.dtype(config)] // 8
    kv_per_token = family.kv_bytes_per_token(config, kv_dtype_bytes[request.kv_dtype] or model_bytes, tp)
    layers = family.attention_layers(config) + (family.mtp_layers(config) if k else 0)
    block = family.kv_block_size
    page = block * kv_per_token

    reserve = request.reserve if request.reserve is not None else default_reserve
    max_len = request.max_model_len or int(family.setting(config, "max_position_embeddings", 0)) or 4096
    sglang = request.engine == "sglang"
    if sglang:
        block, page = 1, kv_per_token
    budget = int((request.gpu_memory - reserve) * request.util) if sglang else int(request.gpu_memory * request.util)
    free = budget - weights_loaded - (0 if sglang else reserve)
    kv_pool = request.kv_cache_memory if request.kv_cache_memory is not None else free
    num_blocks = max(0, kv_pool) // (page * max(layers, 1))
    per_request = math.ceil(max_len / block)
    concurrency = num_blocks / per_request
    positions = int(family.setting(config, "max_position_embeddings", 0)) or None
    longest = min(num_blocks * block, positions or 1 << 62)

    problems: list[str] = []
    if request.kv_cache_memory is None and free <= 0:
        problems.append(f"weights ({weights_loaded / GIB:.2f} GiB) and the reserve ({reserve / GIB:.2f} GiB) "
                        f"exceed {request.util:.2f} x {request.gpu_memory / GIB:.2f} GiB")
    elif concurrency < 1:
        problems.append(f"one request at --max-model-len {max_len} needs {per_request} blocks; the pool has {num_blocks} "
                        f"(the longest context that fits is {longest} tokens)")
    safe = max(0, math.floor(concurrency))
    if request.max_num_seqs is not None and request.max_num_seqs > safe and not problems:
        problems.append(f"--max-num-seqs {request.max_num_seqs} exceeds the {concurrency:.2f} requests that fit at full "
                        f"context: the engine will preempt (or OOM at start-up on some builds)")
    shown = {**asdict(request), "spec_tokens": k, "max_model_len": max_len, "language_model_only": True, "reserve": reserve}
    return MemoryPlan(
        path=path, request=shown, weights=weights, weights_loaded=weights_loaded, kv_pool=kv_pool,
        kv_bytes_per_token_per_layer=kv_per_token, attention_layers=layers, gdn_layers=0, gdn_state_per_layer=0,
        gdn_state_per_sequence=0, block_size=block, group_size=layers, groups=1, num_blocks=num_blocks,
        kv_tokens=num_blocks * block, max_model_len=max_len, blocks_per_request=per_request,
        max_concurrency=round(concurrency, 2), longest_context_that_fits=longest, safe_max_num_seqs=safe,
        problems=problems, engine=request.engine, gdn_state_slots=0 if sglang else None,
    )

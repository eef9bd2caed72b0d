"""`mtpforge plan`: how much context and concurrency a checkpoint gets on one GPU in vLLM or SGLang.

The arithmetic is vLLM's own, for hybrid models (v1 engine, hybrid KV cache
manager), so the figures line up with what its log prints at start-up:

* Only full-attention layers (and the MTP layer, when drafting) hold a KV
  cache; each Gated DeltaNet layer holds one recurrent + conv state per
  sequence. The conv state is widened by the speculative tokens
  (`kernel - 1 + k` columns); the recurrent state is in `mamba_ssm_dtype`
  (float32 for Qwen3.5/3.6).
* vLLM gives every layer the same page size: the attention block grows to
  `16 * ceil(state / (16 * kv_bytes_per_token))` tokens so one page can hold a
  GDN state, and GDN pages are padded up to it.
* Layers are split into groups of equal size (the smallest per-type layer
  count, or the largest when they are within 25 %); one block id serves one
  layer of every group, so the pool's blocks cost `page * group_size` and the
  reported token capacity is `blocks // groups * block_size`.
* A request at full context needs `ceil(len / block)` blocks per attention
  group and `1 + k` per GDN group; concurrency is blocks over that.

What vLLM measures at start-up and we cannot (activation peak, CUDA graphs,
non-torch memory) is `--reserve`: 3 GiB by default, which is what the W4A16
seed's published figures imply (46 GiB x 0.95 - 19 GiB weights - 21.79 GiB KV).
`--kv-cache-memory` skips the guess, like vLLM's `--kv-cache-memory-bytes`.
vLLM multiplies the *total* memory the driver reports by the utilization
(vllm/v1/worker/utils.py::request_memory): plan from the GPU's name
(engine/gpus.py: 97,887 MiB for a "96 GB" RTX PRO 6000) rather than the
marketing size in GB.

SGLang (`engine="sglang"`, engine/sglang_memory.py) sizes its pools
differently: what is free before loading, times `--mem-fraction-static`, minus
the weights, split between the Mamba state slots and a page-size-1 KV pool.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.engine.bounds import BYTES, COUNT, FRACTION, POSITIVE, check
from mtpforge.errors import UsageError
from mtpforge.families import EMBEDDINGS, MTP, TRUNK, VISION, detect_family
from mtpforge.families.base import FULL_ATTENTION, LINEAR_ATTENTION
from mtpforge.families.blocks import read_dims
from mtpforge.units import GIB

DEFAULT_RESERVE = 3 * GIB
# SGLang takes activations and CUDA graphs from the (1 - mem_fraction_static) share; what it cannot see is memory
# used before its baseline (the CUDA context, NCCL): about half a GiB on one GPU.
SGLANG_RESERVE = GIB // 2
ENGINES = ("vllm", "sglang")
KERNEL_BLOCK_ALIGNMENT = 16  # FlashAttention / FlashInfer on CUDA: block sizes are multiples of 16
KV_DTYPE_BYTES = {"auto": None, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
STATE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked: the card, vLLM's memory flags, and the speculative setting."""

    gpu_memory: int
    util: float = 0.9
    kv_dtype: str = "auto"
    max_model_len: int | None = None  # None: the config's max_position_embeddings
    spec_tokens: int | None = None  # None: 3 when the checkpoint has an MTP head, else 0
    max_num_seqs: int | None = None
    tensor_parallel: int = 1
    reserve: int | None = None  # None: DEFAULT_RESERVE for vLLM, SGLANG_RESERVE for SGLang
    kv_cache_memory: int | None = None
    language_model_only: bool = False
    engine: str = "vllm"

    def __post_init__(self) -> None:
        """The ranges `mtpforge plan` enforces (engine/bounds.py), so the Python API refuses the same values."""
        check("--gpu-memory", self.gpu_memory, POSITIVE)
        check("--util", self.util, FRACTION)
        check("--max-model-len", self.max_model_len, POSITIVE)
        check("--num-speculative-tokens", self.spec_tokens, COUNT)
        check("--max-num-seqs", self.max_num_seqs, POSITIVE)
        check("--tensor-parallel-size", self.tensor_parallel, POSITIVE)
        check("--reserve", self.reserve, BYTES)
        check("--kv-cache-memory", self.kv_cache_memory, BYTES)
        if self.engine not in ENGINES:
            raise UsageError(f"--engine {self.engine!r} is not supported", hint=f"one of {', '.join(ENGINES)}")
        if self.kv_dtype not in KV_DTYPE_BYTES:
            raise UsageError(f"--kv-dtype {self.kv_dtype!r} is not one vLLM knows here",
                             hint=f"one of {', '.join(KV_DTYPE_BYTES)}")


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU figures; `to_dict()` is the `--json` document."""

    path: str
    request: dict[str, Any]
    weights: dict[str, int]
    weights_loaded: int
    kv_pool: int
    kv_bytes_per_token_per_layer: int
    attention_layers: int
    gdn_layers: int
    gdn_state_per_layer: int
    gdn_state_per_sequence: int
    block_size: int
    group_size: int
    groups: int
    num_blocks: int
    kv_tokens: int
    max_model_len: int
    blocks_per_request: int
    max_concurrency: float
    longest_context_that_fits: int
    safe_max_num_seqs: int
    problems: list[str]
    engine: str = "vllm"
    gdn_state_slots: int | None = None  # SGLang: max_mamba_cache_size

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.plan/1", **asdict(self), "ok": self.ok}


def plan(path: CheckpointLike, request: PlanRequest) -> MemoryPlan:
    """Plan vLLM's memory for the checkpoint at `path` (a directory or an open `Checkpoint`) on the GPU in `request`.

    Raises:
        UsageError: a flag is out of range (unknown KV dtype, TP that does not divide the heads).
        CheckpointError: the checkpoint cannot be read.
    """
    ckpt = as_checkpoint(path)
    config = ckpt.config
    family = detect_family(config)
    if not family.hybrid:  # attention only (DeepSeek, GLM, MiMo): no GDN state to plan
        from mtpforge.engine.attention_memory import attention_plan

        return attention_plan(ckpt, family, request, path=str(path), kv_dtype_bytes=KV_DTYPE_BYTES,
                              default_reserve=SGLANG_RESERVE if request.engine == "sglang" else DEFAULT_RESERVE)
    dims = read_dims(family, config)
    tp = request.tensor_parallel
    _check_request(request, dims.lin_v_heads, dims.lin_k_heads)

    groups = inspect_checkpoint(ckpt).groups
    weights = {g: groups[g].bytes for g in (TRUNK, EMBEDDINGS, MTP, VISION)}
    has_head = weights[MTP] > 0
    k = request.spec_tokens if request.spec_tokens is not None else (3 if has_head else 0)
    text_only = request.language_model_only or family.language_model_only(config) or not family.has_vision(config)
    loaded = weights[TRUNK] + weights[EMBEDDINGS] + (weights[MTP] if k else 0) + (0 if text_only else weights[VISION])
    weights_loaded = math.ceil(loaded / tp)  # embeddings and norms replicate; close enough for a plan

    model_bytes = DTYPE_BITS[family.dtype(config)] // 8
    kv_bytes = KV_DTYPE_BYTES[request.kv_dtype] or model_bytes
    kv_per_token = 2 * max(1, dims.kv_heads // tp) * dims.head_dim * kv_bytes

    ssm_dtype = family.setting(config, "mamba_ssm_dtype") or "auto"
    ssm_bytes = STATE_DTYPE_BYTES.get(ssm_dtype, model_bytes)
    conv_dim = (2 * dims.key_dim + dims.value_dim) // tp
    recurrent = (dims.lin_v_heads // tp) * dims.lin_v_dim * dims.lin_k_dim * ssm_bytes
    state = conv_dim * (dims.conv_kernel - 1 + k) * model_bytes + recurrent  # vLLM widens the conv state by k

    align = KERNEL_BLOCK_ALIGNMENT
    block_size = align * math.ceil(state / (align * kv_per_token))
    page = block_size * kv_per_token
    n_attn = dims.layer_types.count(FULL_ATTENTION) + (family.mtp_layers(config) if k else 0)
    n_gdn = dims.layer_types.count(LINEAR_ATTENTION)
    group_size = min(n_attn, n_gdn)
    if max(n_attn, n_gdn) < 1.25 * group_size:
        group_size = max(n_attn, n_gdn)
    attn_groups, gdn_groups = math.ceil(n_attn / group_size), math.ceil(n_gdn / group_size)

    reserve = request.reserve if request.reserve is not None else (
        SGLANG_RESERVE if request.engine == "sglang" else DEFAULT_RESERVE)
    max_len = request.max_model_len or int(family.setting(config, "max_position_embeddings", 0)) or 4096
    shown_request = {**asdict(request), "spec_tokens": k, "max_model_len": max_len, "language_model_only": text_only,
                     "reserve": reserve}
    if request.engine == "sglang":
        from mtpforge.engine.sglang_memory import sglang_plan

        return sglang_plan(path=str(path), request=request, shown_request=shown_request, weights=weights,
                           weights_loaded=weights_loaded, reserve=reserve, kv_per_token=kv_per_token,
                           n_attn=dims.layer_types.count(FULL_ATTENTION) + (family.mtp_layers(config) if k else 0),
                           n_gdn=dims.layer_types.count(LINEAR_ATTENTION), k=k, max_len=max_len,
                           state=conv_dim * (dims.conv_kernel - 1) * model_bytes + recurrent)
    budget = int(request.gpu_memory * request.util)
    kv_pool = request.kv_cache_memory if request.kv_cache_memory is not None else budget - weights_loaded - reserve
    num_blocks = max(0, kv_pool) // (page * group_size)
    per_request = attn_groups * math.ceil(max_len / block_size) + gdn_groups * (1 + k)
    concurrency = num_blocks / per_request
    attention_blocks = num_blocks - gdn_groups * (1 + k)
    positions = int(family.setting(config, "max_position_embeddings", 0)) or None
    longest = min(max(0, attention_blocks // attn_groups) * block_size, positions or 1 << 62)

    problems: list[str] = []
    if request.kv_cache_memory is None and weights_loaded + reserve > budget:
        problems.append(f"weights ({weights_loaded / GIB:.2f} GiB) and the reserve ({reserve / GIB:.2f} GiB) "
                        f"exceed {request.util:.2f} x {request.gpu_memory / GIB:.2f} GiB")
    elif concurrency < 1:
        problems.append(f"one request at --max-model-len {max_len} needs {per_request} blocks; the pool has {num_blocks} "
                        f"(the longest context that fits is {longest} tokens)")
    safe = max(0, math.floor(concurrency))
    if request.max_num_seqs is not None and request.max_num_seqs > safe and not problems:
        problems.append(f"--max-num-seqs {request.max_num_seqs} exceeds the {concurrency:.2f} requests that fit at full "
                        f"context: the engine will preempt (or OOM at start-up on some builds)")

    return MemoryPlan(
        path=str(path), request=shown_request,
        weights=weights, weights_loaded=weights_loaded, kv_pool=kv_pool, kv_bytes_per_token_per_layer=kv_per_token,
        attention_layers=n_attn, gdn_layers=n_gdn, gdn_state_per_layer=state, gdn_state_per_sequence=state * n_gdn,
        block_size=block_size, group_size=group_size, groups=attn_groups + gdn_groups, num_blocks=num_blocks,
        kv_tokens=num_blocks // (attn_groups + gdn_groups) * block_size, max_model_len=max_len,
        blocks_per_request=per_request, max_concurrency=round(concurrency, 2), longest_context_that_fits=longest,
        safe_max_num_seqs=safe, problems=problems,
    )


def _check_request(request: PlanRequest, v_heads: int, k_heads: int) -> None:
    tp = request.tensor_parallel  # its range is checked in PlanRequest; here: does it divide the heads
    if v_heads % tp or k_heads % tp:
        raise UsageError(f"--tensor-parallel-size {tp} does not divide the GDN heads ({k_heads} key, {v_heads} value)",
                         hint="vLLM shards GDN heads evenly; use a divisor such as 1, 2 or 4")

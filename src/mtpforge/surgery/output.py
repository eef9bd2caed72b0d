"""Assemble a `WritePlan` from a `Rebuild` and the edited JSON documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtpforge.checkpoint.checkpoint import HF_QUANT_CONFIG
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.surgery.rebuild import Rebuild
from mtpforge.surgery.writeplan import WritePlan, index_document


def make_plan(verb: str, source: Path, rb: Rebuild, config: dict[str, Any], hf_quant: dict[str, Any] | None,
              actions: list[str], warnings: list[str]) -> WritePlan:
    """The plan writing `rb`'s files, `config`, the index and (if any) `hf_quant_config.json`."""
    json_files: dict[str, Any] = {"config.json": config, INDEX_NAME: index_document(rb.weight_map, rb.sizes)}
    if hf_quant is not None:
        json_files[HF_QUANT_CONFIG] = hf_quant
    if rb.dropped_files:
        actions = [*actions, f"drop {', '.join(rb.dropped_files)} (nothing left in it)"]
    return WritePlan(verb, source, rb.linked, rb.written, json_files, rb.linked_bytes, tuple(actions), tuple(warnings))

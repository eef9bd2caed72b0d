"""Read just enough of a Hugging Face repository over HTTP: JSON files, the
safetensors headers of chosen shards, and byte ranges of chosen tensors.

URLs are the hub's download URLs, `{endpoint}/{repo}/resolve/{revision}/{file}`
(the ones huggingface_hub fetches), with `HF_ENDPOINT` and `HF_TOKEN` honoured
as huggingface_hub honours them. A graft from the hub therefore downloads the
index, the headers of the shards that hold `mtp.*`, and the head's bytes:
about 0.85 GB for Qwen3.6-27B instead of 55 GB.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mtpforge.checkpoint.header import MAX_HEADER_BYTES, HeaderError, ShardHeader, parse_header
from mtpforge.checkpoint.http import HttpRange, fetch_range, http_get
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.errors import CheckpointError, SourceError

DEFAULT_ENDPOINT = "https://huggingface.co"
# A JSON file of a repository (config, index, tokenizer config): the local reader's bound; an index of a
# 671B model is about 10 MB.
MAX_JSON_FILE_BYTES = 64 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(text: str) -> bool:
    """True for `org/name` that is not an existing local path."""
    return bool(_REPO_ID.match(text)) and not os.path.exists(text)


@dataclass(frozen=True)
class RemoteRepo:
    """A model repository on a Hugging Face-compatible hub, at one revision."""

    repo_id: str
    revision: str = "main"
    endpoint: str = ""

    @property
    def base(self) -> str:
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")

    def url(self, filename: str) -> str:
        return f"{self.base}/{self.repo_id}/resolve/{urllib.parse.quote(self.revision, safe='')}/{urllib.parse.quote(filename)}"

    @property
    def headers(self) -> dict[str, str]:
        token = os.environ.get("HF_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def json_file(self, filename: str, *, optional: bool = False) -> Any:
        """GET and parse a JSON file; None when `optional` and the hub says 404."""
        status, _, raw = http_get(self.url(filename), self.headers, missing_ok=optional,
                                  max_bytes=MAX_JSON_FILE_BYTES)
        if status == 404:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise CheckpointError(f"{self.repo_id}/{filename}: not valid JSON: {e}") from e

    def shard_header(self, filename: str) -> ShardHeader:
        """The validated header of a remote shard, read with two range requests."""
        status, headers, prefix = http_get(self.url(filename), {**self.headers, "Range": "bytes=0-7"},
                                          max_bytes=8)
        match = re.match(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
        if status != 206 or not match:
            raise SourceError(f"{self.url(filename)}: the server does not support byte ranges (HTTP {status})",
                              hint="the hub endpoint must support HTTP range requests")
        total = int(match.group(1))
        try:
            n = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or n > MAX_HEADER_BYTES or 8 + n > total:
                return parse_header(prefix, total, filename)  # raises with the reason
            return parse_header(prefix + fetch_range(self.url(filename), 8, 8 + n, self.headers), total, filename)
        except HeaderError as e:
            raise HeaderError(f"{self.repo_id}: {e}", hint=e.hint) from e

    def tensor_source(self, filename: str, begin: int, end: int) -> HttpRange:
        return HttpRange(self.url(filename), begin, end, tuple(self.headers.items()))

    def weight_map(self) -> dict[str, str] | None:
        """The index's weight_map, or None for a single-file repository."""
        doc = self.json_file(INDEX_NAME, optional=True)
        if doc is None:
            return None
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wm, dict):
            raise CheckpointError(f"{self.repo_id}/{INDEX_NAME}: no weight_map")
        return wm


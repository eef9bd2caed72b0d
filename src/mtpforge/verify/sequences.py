"""Token sequences verify measured on, saved so a later run (another machine, a streamed model) scores the same text.

    {"schema": "mtpforge.sequences/1", "source": "vLLM at http://...", "sequences": [{"prompt_tokens": 64, "ids": [...]}]}

Each entry is a prompt followed by the greedy continuation that was scored: the engine's (`--engine-url`) or the
reference runtime's. Written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mtpforge.errors import UsageError

SCHEMA = "mtpforge.sequences/1"
MAX_BYTES = 1 << 30


def save_sequences(path: str | Path, sequences: list[tuple[int, list[int]]], source: str) -> Path:
    """Write `sequences` (prompt length, ids) to `path` atomically."""
    out = Path(path)
    doc = {"schema": SCHEMA, "source": source,
           "sequences": [{"prompt_tokens": n, "ids": ids} for n, ids in sequences]}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_sequences(path: str | Path) -> tuple[list[tuple[int, list[int]]], str]:
    """The (prompt length, ids) pairs and the source line of a file `save_sequences` wrote.

    Raises:
        UsageError: the file cannot be read or is not a sequences document.
    """
    hint = "it is written by `mtpforge verify --save-sequences FILE`"
    try:
        if Path(path).stat().st_size > MAX_BYTES:
            raise UsageError(f"--sequences {path}: over {MAX_BYTES >> 20} MiB", hint=hint)
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--sequences {path}: cannot read: {e.strerror or e}", hint=hint) from e
    except ValueError as e:
        raise UsageError(f"--sequences {path}: not valid JSON: {e}", hint=hint) from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("sequences"), list):
        raise UsageError(f"--sequences {path}: not a {SCHEMA} document", hint=hint)
    out = []
    for i, entry in enumerate(doc["sequences"]):
        ids = entry.get("ids") if isinstance(entry, dict) else None
        n = entry.get("prompt_tokens") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not all(type(t) is int and t >= 0 for t in ids) or type(n) is not int \
                or not 1 <= n < len(ids):
            raise UsageError(f"--sequences {path}: sequence {i} needs prompt_tokens >= 1 and more ids than that "
                             "(non-negative token ids)", hint=hint)
        out.append((n, ids))
    if not out:
        raise UsageError(f"--sequences {path}: no sequences", hint=hint)
    return out, str(doc.get("source", "unknown"))

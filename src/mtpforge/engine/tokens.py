"""Which special tokens a checkpoint's tokenizer has, read from its JSON files (no tokenizer library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import paths
from mtpforge.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def tokenizer_tokens(root: Path, wanted: set[str]) -> set[str]:
    """Which of `wanted` are single tokens of the tokenizer in `root`, as vLLM's `tokenizer.get_vocab()` sees them.

    Reads tokenizer.json (`added_tokens` and `model.vocab`), tokenizer_config.json (`added_tokens_decoder`) and
    vocab.json; a file that is missing, unsafe (a link leaving `root`, a FIFO) or not a JSON object contributes nothing.
    """
    tokens: set[str] = set()
    for name in TOKENIZER_FILES:
        try:
            doc = json.loads(paths.read_text(root, name, what="tokenizer file"))  # never through a link that leaves root
        except (OSError, ValueError, CheckpointError):
            continue
        if not isinstance(doc, dict):
            continue
        added: Any = []
        vocab: Any = {}
        if name == "tokenizer.json":
            added = doc.get("added_tokens")
            vocab = doc["model"].get("vocab") if isinstance(doc.get("model"), dict) else None
        elif name == "tokenizer_config.json":
            decoder = doc.get("added_tokens_decoder")
            added = list(decoder.values()) if isinstance(decoder, dict) else None
        else:
            vocab = doc
        if isinstance(added, list):
            tokens |= {t["content"] for t in added if isinstance(t, dict) and isinstance(t.get("content"), str)}
        if isinstance(vocab, dict):  # BPE, WordPiece: token -> id
            tokens |= {t for t in wanted if t in vocab}
        elif isinstance(vocab, list):  # Unigram: [token, score] pairs
            tokens |= {e[0] for e in vocab if isinstance(e, list) and e and isinstance(e[0], str)}
    return tokens & wanted

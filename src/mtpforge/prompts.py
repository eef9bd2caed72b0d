"""The prompts verify measures on: the bundled set, or the user's file, as token ids."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from mtpforge.errors import CheckpointError, UsageError


def load_prompts(path: str | None) -> list[str]:
    """Prompt texts from `path` (a JSON list, `{"prompts": [...]}`, or one prompt per line), or the bundled set."""
    if path is None:
        doc = json.loads((resources.files("mtpforge") / "models" / "prompts.json").read_text())
        return list(doc["prompts"])
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--prompts {path}: cannot read: {e.strerror}",
                         hint="a JSON list of texts or one text per line") from e
    if file.suffix == ".json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--prompts {path}: not valid JSON: {e}") from e
        prompts = doc.get("prompts") if isinstance(doc, dict) else doc
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p for p in prompts):
            raise UsageError(f"--prompts {path}: expected a list of non-empty strings (or {{\"prompts\": [...]}})")
        return prompts
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return prompts


def tokenize(checkpoint: Path, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each prompt with the checkpoint's own tokenizer, cut to `max_tokens`."""
    from tokenizers import Tokenizer

    file = checkpoint / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{checkpoint}: no tokenizer.json to encode the prompts",
                              hint="copy the tokenizer from the base model")
    tok = Tokenizer.from_file(str(file))
    return [ids[:max_tokens] for ids in (e.ids for e in tok.encode_batch(prompts)) if ids]

"""The chat-template step of a build: ship a fixed template instead of the base's (seed 001 ships froggeric's v9).

A recipe's `[publish] chat_template = "FILE"` (relative to the recipe) is checked to parse as Jinja, then written as
`chat_template.jinja`; a `chat_template` entry in tokenizer_config.json is removed so that the file is the only
template (transformers and vLLM would otherwise pick one of two). Both files are replaced whole, never written
through: they are often hard links to the base's.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtpforge.errors import UsageError

TEMPLATE_FILE = "chat_template.jinja"


def read_template(path: Path) -> str:
    """The template at `path`, refused (UsageError naming the file and line) unless it is text that Jinja parses."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"chat template {path}: {e}", hint="[publish] chat_template names a Jinja file beside the recipe") from e
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"chat template {path}, line {e.lineno}: {e.message}",
                         hint="fix the template; the build writes nothing until it parses") from e
    return text


def apply_template(out: Path, text: str) -> None:
    """Make `text` the only chat template of the checkpoint in `out`."""
    from mtpforge.surgery.stage import write_atomically

    write_atomically(out / TEMPLATE_FILE, text.encode("utf-8"))
    config = out / "tokenizer_config.json"
    if config.is_file():
        doc = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "chat_template" in doc:
            del doc["chat_template"]
            write_atomically(config, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

"""Calibration text: where it comes from, how much, how long, with or without the chat template; and its token ids.

The seeds' cards: 512 x 2048 tokens of HuggingFaceH4/ultrachat_200k with the chat
template (000, 004), 128 x 2048 of wikitext-2 (003). A source is a text file
(a JSON list, `{"prompts": [...]}`, or one text per line), a dataset name as
`datasets.load_dataset` takes it, `NAME[:CONFIG][:SPLIT]` (read from the local
Hugging Face cache or the hub; rows with `messages` are chats, rows with `text`
are texts), or nothing: the bundled prompts. Every calibrated path asks for the
tokenizer first, so a base without one is refused before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtpforge.errors import UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Calibration:
    """What the calibrated steps (AWQ, GPTQ, the head's capture, FP4 activation ranges) read."""

    source: str | None = None  # a text file, a dataset NAME[:CONFIG][:SPLIT], or None: the bundled prompts
    samples: int = 64  # texts used at most
    seq_len: int = 512  # tokens per text at most
    chat_template: bool = False  # render each text (or chat) through the tokenizer's chat template first

    def describe(self) -> str:
        return (f"{self.samples} x {self.seq_len} tokens of {self.source or 'the bundled prompts'}"
                + (", chat template applied" if self.chat_template else ""))


def require_tokenizer(base: Path, what: str) -> None:
    """Refuse, before any work, a calibrated request on a base that ships no tokenizer."""
    if not any((base / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{what} calibrates on text, and {base} ships no tokenizer ({' / '.join(TOKENIZER_FILES)})",
                         hint="copy the tokenizer files of the model it was trained from into the base, "
                              "or use --method rtn (data-free)")


def texts(calibration: Calibration) -> list[Any]:
    """The calibration texts (or chats: lists of {role, content}), the first `samples` of the source."""
    from mtpforge.prompts import load_prompts

    source = calibration.source
    if source is None or Path(source).is_file():
        return list(load_prompts(source))[: calibration.samples]
    if Path(source).suffix in (".json", ".txt", ".jsonl"):
        raise UsageError(f"calibration {source!r}: no such file",
                         hint="a text file, or a dataset name such as wikitext:wikitext-2-raw-v1:train")
    return _dataset_rows(source, calibration.samples)


def token_ids(base: Path, calibration: Calibration) -> list[list[int]]:
    """The tokenized calibration texts, each cut to `seq_len` tokens; empty texts dropped.

    Raises:
        UsageError: no tokenizer in `base`, or no text yields a token.
    """
    from transformers import AutoTokenizer

    require_tokenizer(base, "calibration")
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = []
    for row in texts(calibration):
        text = _render(tokenizer, row, calibration.chat_template)
        ids = tokenizer(text, truncation=True, max_length=calibration.seq_len, add_special_tokens=not calibration.chat_template)
        if ids["input_ids"]:
            encoded.append(list(ids["input_ids"]))
    if not encoded:
        raise UsageError(f"calibration: the tokenizer of {base} gives no tokens for any of the texts",
                         hint="check the tokenizer files, or the calibration source")
    return encoded


def _render(tokenizer: Any, row: Any, chat_template: bool) -> str:
    if not chat_template:
        return row if isinstance(row, str) else "\n".join(m["content"] for m in row)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("calibration: chat_template is on, and the tokenizer has no chat template",
                         hint="turn chat_template off, or add the base's chat_template.jinja")
    chat = [{"role": "user", "content": row}] if isinstance(row, str) else row
    return str(tokenizer.apply_chat_template(chat, tokenize=False))


def _dataset_rows(source: str, samples: int) -> list[Any]:
    """The first `samples` non-empty rows of a dataset: `messages` (a chat) or `text`."""
    name, _, rest = source.partition(":")
    config, _, split = rest.partition(":")
    try:
        from datasets import load_dataset

        data = load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:  # datasets raises many kinds (offline, unknown name, bad config)
        raise UsageError(f"calibration dataset {source!r}: cannot load: {e}",
                         hint="a text file (JSON list or one text per line), or a dataset in the local Hugging Face cache") from e
    rows = []
    for row in data:
        value = row.get("messages") or row.get("text")
        if value and (not isinstance(value, str) or value.strip()):
            rows.append(value)
        if len(rows) == samples:
            break
    return rows

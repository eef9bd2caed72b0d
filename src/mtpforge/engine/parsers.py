"""Which reasoning and tool-call parsers a launch line names, chosen from the checkpoint's tokenizer and chat template.

A parser goes on the line only when the tokenizer has the tokens it splits on (vLLM refuses to start otherwise, or,
on 0.32, silently parses nothing). Which tool parser depends on how the chat template writes a call:

* Qwen3.5 / 3.6 / Qwen3-Coder templates write `<tool_call>\\n<function=NAME>\\n<parameter=...>` (XML):
  vLLM's `qwen3_xml` (seeds 000 and 001; `qwen3_coder` is the same class in vLLM 0.32,
  vllm/tool_parsers/__init__.py), SGLang's `qwen3_coder`.
* Qwen2.5 / Qwen3 (2504) templates write `<tool_call>\\n{"name": ..., "arguments": ...}` (JSON):
  vLLM's `hermes`, SGLang's `qwen25`.

A template that renders no tool call (or no template) says nothing; the Qwen3.5/3.6 format (XML) is then assumed,
and a note says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtpforge.checkpoint import paths
from mtpforge.engine.tokens import tokenizer_tokens
from mtpforge.errors import CheckpointError, UsageError

# The tokens each parser splits on, as single tokens of the checkpoint's tokenizer. vLLM 0.32 builds both parsers
# from vllm/parser/qwen3.py (Qwen3Parser: THINK_START/THINK_END and TOOL_START/TOOL_END are its `token_id_terminals`,
# looked up in tokenizer.get_vocab()); earlier releases refuse to start when they are missing: the qwen3 reasoning
# parser in vllm/reasoning/basic_parsers.py ("could not locate think start/end tokens in the tokenizer!"), the
# qwen3_coder one in vllm/tool_parsers/qwen3coder_tool_parser.py ("could not locate tool call start/end tokens").
PARSER_TOKENS = {"reasoning": ("<think>", "</think>"), "tool": ("<tool_call>", "</tool_call>")}
REASONING_PARSER = "qwen3"  # the same name in vLLM and SGLang
TOOL_PARSERS = {  # call format -> engine -> parser name
    "xml": {"vllm": "qwen3_xml", "sglang": "qwen3_coder"},
    "json": {"vllm": "hermes", "sglang": "qwen25"},
}
# Parsers that split on <tool_call> (explicit choices are checked against the tokenizer too).
QWEN_TOOL_PARSERS = {"qwen3_xml", "qwen3_coder", "hermes", "qwen3_json", "qwen25", "qwen"}
NO_PARSER = "none"


def chat_template(root: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja, else tokenizer_config.json's `chat_template`
    (a string, or the list of named templates transformers also accepts: the `default` one)."""
    try:
        if paths.exists(root, "chat_template.jinja"):
            return paths.read_text(root, "chat_template.jinja", what="chat template")
        doc = json.loads(paths.read_text(root, "tokenizer_config.json", what="tokenizer file"))
    except (OSError, ValueError, CheckpointError):
        return None
    value = doc.get("chat_template") if isinstance(doc, dict) else None
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}.get("default")
    return value if isinstance(value, str) else None


def tool_call_format(root: Path) -> str | None:
    """`xml`, `json`, or None when the template renders no tool call."""
    template = chat_template(root)
    if not template or "<tool_call>" not in template:
        return None
    return "xml" if "<function=" in template else "json"


def choose_parsers(root: Path, engine: str, tool_parser: str | None, *,
                   recorded: bool = False) -> tuple[dict[str, str], list[str]]:
    """The parsers for `engine` (`{"reasoning": name, "tool": name}`, each only when it can work) and notes on
    what was left out or assumed. `tool_parser`: None chooses from the template, `none` leaves it out, a name forces it
    (`recorded`: a name from a recipe's [serve], left out with a note, not refused, when the tokenizer lacks its tokens).

    Raises:
        UsageError: a Qwen tool parser was asked for by name and the tokenizer lacks its tokens.
    """
    present = tokenizer_tokens(root, {t for pair in PARSER_TOKENS.values() for t in pair})
    parsers: dict[str, str] = {}
    notes: list[str] = []
    if set(PARSER_TOKENS["reasoning"]) <= present:
        parsers["reasoning"] = REASONING_PARSER
    else:
        notes.append(_missing("reasoning", REASONING_PARSER))
    if tool_parser == NO_PARSER:
        return parsers, notes
    has_tool_tokens = set(PARSER_TOKENS["tool"]) <= present
    if tool_parser is not None:
        if tool_parser in QWEN_TOOL_PARSERS and not has_tool_tokens:
            if recorded:
                notes.append(_missing("tool", tool_parser))
                return parsers, notes
            raise UsageError(f"--tool-call-parser {tool_parser} splits on <tool_call> and </tool_call>, which the tokenizer "
                             f"in {root} does not have as tokens", hint="leave --tool-call-parser out (or pass none)")
        parsers["tool"] = tool_parser
        return parsers, notes
    fmt = tool_call_format(root)
    name = TOOL_PARSERS[fmt or "xml"][engine]
    if not has_tool_tokens:
        notes.append(_missing("tool", name))
        return parsers, notes
    parsers["tool"] = name
    if fmt is None:
        notes.append(f"the chat template renders no tool call: {name} assumed (Qwen3.5/3.6's XML format); "
                     "--tool-call-parser overrides")
    return parsers, notes


def _missing(kind: str, parser: str) -> str:
    tokens = " and ".join(PARSER_TOKENS[kind])
    return (f"no {kind} parser: the tokenizer has no {tokens} tokens, which Qwen's {parser} parser splits on "
            "(older vLLM releases refuse to start with it)")

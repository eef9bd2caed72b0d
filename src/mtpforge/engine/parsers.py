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
# Parsers that split on <tool_call> / <think> (explicit choices are checked against the tokenizer too).
QWEN_PARSERS = {"tool": {"qwen3_xml", "qwen3_coder", "hermes", "qwen3_json", "qwen25", "qwen"},
                "reasoning": {"qwen3", "qwen3-thinking", "deepseek_r1", "deepseek-r1"}}
FLAGS = {"tool": "tool-call-parser", "reasoning": "reasoning-parser"}
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


def choose_parsers(root: Path, engine: str, tool_parser: str | None, *, reasoning_parser: str | None = None,
                   recorded: frozenset[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """The parsers for `engine` (`{"reasoning": name, "tool": name}`, each only when it can work) and notes on
    what was left out or assumed. `tool_parser` / `reasoning_parser`: None chooses (the reasoning parser when the
    tokenizer has <think>; the tool parser from the template), `none` leaves it out, a name forces it.
    `recorded`: the kinds ("reasoning", "tool") whose name came from a recipe's [serve]: left out with a note, not
    refused, when the tokenizer lacks the tokens it splits on.

    Raises:
        UsageError: a Qwen parser was asked for by name and the tokenizer lacks its tokens.
    """
    present = tokenizer_tokens(root, {t for pair in PARSER_TOKENS.values() for t in pair})
    parsers: dict[str, str] = {}
    notes: list[str] = []
    if reasoning_parser is not None:
        _named("reasoning", reasoning_parser, root, present, parsers, notes, recorded="reasoning" in recorded)
    elif set(PARSER_TOKENS["reasoning"]) <= present:
        parsers["reasoning"] = REASONING_PARSER
    else:
        notes.append(_missing("reasoning", REASONING_PARSER))
    if tool_parser is not None:
        _named("tool", tool_parser, root, present, parsers, notes, recorded="tool" in recorded)
        return parsers, notes
    fmt = tool_call_format(root)
    name = TOOL_PARSERS[fmt or "xml"][engine]
    if not set(PARSER_TOKENS["tool"]) <= present:
        notes.append(_missing("tool", name))
        return parsers, notes
    parsers["tool"] = name
    if fmt is None:
        notes.append(f"the chat template renders no tool call: {name} assumed (Qwen3.5/3.6's XML format); "
                     "--tool-call-parser overrides")
    return parsers, notes


def _named(kind: str, name: str, root: Path, present: set[str], parsers: dict[str, str], notes: list[str], *,
           recorded: bool) -> None:
    """A parser asked for by name (or `none`): added, unless it is a Qwen one and the tokenizer lacks its tokens."""
    if name == NO_PARSER:
        return
    if name in QWEN_PARSERS[kind] and not set(PARSER_TOKENS[kind]) <= present:
        if recorded:
            notes.append(_missing(kind, name))
            return
        first, last = PARSER_TOKENS[kind]
        raise UsageError(f"--{FLAGS[kind]} {name} splits on {first} and {last}, which the tokenizer "
                         f"in {root} does not have as tokens", hint=f"leave --{FLAGS[kind]} out (or pass none)")
    parsers[kind] = name


def _missing(kind: str, parser: str) -> str:
    tokens = " and ".join(PARSER_TOKENS[kind])
    return (f"no {kind} parser: the tokenizer has no {tokens} tokens, which Qwen's {parser} parser splits on "
            "(older vLLM releases refuse to start with it)")

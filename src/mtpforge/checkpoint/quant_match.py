"""Module-name rules of quantization configs, compiled once and answered once per name.

A 397B MoE index has ~370K tensors; asking each of ~180 exclude patterns about
each module by `fnmatchcase` made tens of millions of calls. Each rule list is
compiled here into at most one exact-name set and one regex, and every answer
is cached per module name (fused groups and doctor's checks ask again).

The matching semantics are the engines' (vLLM 0.2x):
- compressed-tensors `ignore`, Quark `exclude`, `ignored_layers` of fp8: an
  exact name, or `re:` + a regex applied with `re.match` (anchored at the start).
- ModelOpt `exclude_modules`: `fnmatch` wildcards (case-sensitive, as SGLang).
- AWQ `modules_to_not_convert`: a substring of the module name.
- GPTQ `dynamic`: ordered `re.match` rules, `-:` skips the module, `+:` (or no
  prefix) overrides its settings; the first rule that matches decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import translate
from functools import lru_cache
from typing import Any

_CACHE = 1 << 20


class NameRules:
    """Does a module name match any entry of a rule list? Exact names, prefixes, suffixes, regexes (re.match),
    wildcards and substrings; the plain kinds are answered by a set and `str.startswith` / `endswith` on tuples."""

    def __init__(self, exact: Iterable[str] = (), regexes: Iterable[str] = (), wildcards: Iterable[str] = (),
                 substrings: Iterable[str] = ()) -> None:
        self.exact = frozenset(exact)
        kinds: dict[str, list[str]] = {"prefix": [], "suffix": [], "contains": list(substrings), "general": []}
        for w in wildcards:
            kind, text = _wildcard_kind(w)
            kinds[kind].append(text)
        self._prefixes, self._suffixes, self._contains = tuple(kinds["prefix"]), tuple(kinds["suffix"]), tuple(kinds["contains"])
        patterns = [f"(?:{r})" for r in regexes] + [translate(w) for w in kinds["general"]]
        self._regex = _compile_any(patterns)
        self.matches = lru_cache(maxsize=_CACHE)(self._matches)
        # everything a match depends on: two rule lists with one key answer every name alike
        self.key = (self.exact, self._prefixes, self._suffixes, self._contains, tuple(patterns))

    def _matches(self, name: str) -> bool:
        return (name in self.exact or name.startswith(self._prefixes) or name.endswith(self._suffixes)
                or any(c in name for c in self._contains) or (self._regex is not None and self._regex(name) is not None))


def _wildcard_kind(pattern: str) -> tuple[str, str]:
    """`P*` is a prefix, `*S` a suffix, `*X*` a substring (P, S, X free of wildcards); anything else a regex."""
    def plain(text: str) -> bool:
        return not any(c in text for c in "*?[")

    if len(pattern) > 1 and pattern[0] == pattern[-1] == "*" and plain(pattern[1:-1]):
        return "contains", pattern[1:-1]
    if pattern.endswith("*") and plain(pattern[:-1]):
        return "prefix", pattern[:-1]
    if pattern.startswith("*") and plain(pattern[1:]):
        return "suffix", pattern[1:]
    return "general", pattern


def ct_rules(entries: Iterable[str]) -> NameRules:
    """compressed-tensors / Quark syntax: exact names and `re:` regexes."""
    entries = list(entries)
    return NameRules(exact=[e for e in entries if not e.startswith("re:")],
                     regexes=[e[3:] for e in entries if e.startswith("re:")])


def wildcard_rules(entries: Iterable[str]) -> NameRules:
    """ModelOpt syntax: fnmatch wildcards (a name without a wildcard character matches only itself)."""
    entries = list(entries)
    plain = [e for e in entries if not any(c in e for c in "*?[")]
    return NameRules(exact=plain, wildcards=[e for e in entries if e not in plain])


def substring_rules(entries: Iterable[str]) -> NameRules:
    """AWQ / transformers `modules_to_not_convert` syntax: the entry occurs anywhere in the name."""
    return NameRules(substrings=list(entries))


class OrderedRules:
    """GPTQ `dynamic`: the first `re.match` rule decides; `-:` means not quantized, else the rule's overrides."""

    def __init__(self, rules: Mapping[str, Any]) -> None:
        self.rules = [(key.startswith("-:"), re.compile(key[2:] if key[:2] in ("-:", "+:") else key), value)
                      for key, value in rules.items()]
        self.decide = lru_cache(maxsize=_CACHE)(self._decide)

    def _decide(self, name: str) -> tuple[bool, Any] | None:
        """(skipped, overrides) of the first rule matching `name`, or None when none does."""
        for negative, regex, value in self.rules:
            if regex.match(name):
                return negative, (None if negative else value)
        return None


def _compile_any(patterns: list[str]) -> Any:
    """One `match` for "any pattern matches at the start"; None when there is none."""
    if not patterns:
        return None
    try:
        return re.compile("|".join(patterns)).match
    except re.error:  # a pattern that only compiles alone (a backreference, a global flag): match each in turn
        compiled = [re.compile(p) for p in patterns]
        return lambda name: next((m for r in compiled if (m := r.match(name))), None)

"""Recipe files (TOML) for `mtpforge build`: loading, checking, and the keyword arguments each step gets.

A recipe names what the seeds' cards did by hand: a donor for a missing head,
the quantization (the `quantize` verb's options, spelled as on the command
line), whether to strip the vision tower, verify thresholds and card settings,
the file layout (`[publish]`, publish/layout.py) and the launch settings the
card prints and `mtpforge serve` starts from (`[serve]`: `ServeOptions`
fields, e.g. `tool_parser`, `attention_backend`, `chat_template_kwargs`).
The five seeds' recipes ship in `mtpforge/recipes/`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mtpforge.errors import UsageError

RECIPE_SECTIONS = {"name": str, "source": str, "quantize": dict, "graft": dict, "strip": dict, "verify": dict, "card": dict,
                   "serve": dict, "publish": dict, "heal": dict}
CARD_KEYS = {"gpus", "max_model_len", "base_model", "kv_dtype", "util", "k"}
HEAL_KEYS = {"on", "steps", "k", "loss", "lr", "batch", "prompts", "eval_every", "patience"}  # on: bf16 | quantized
QUANTIZE_KEYS = {"method", "scheme", "format", "group_size", "scope", "include", "exclude", "mtp", "actorder", "calibration",
                 "samples", "seq_len", "chat_template", "mtp_method", "observer", "awq_mappings", "head_steps"}


@dataclass(frozen=True)
class Recipe:
    """One checked recipe file."""

    path: Path
    doc: dict[str, Any]

    @property
    def name(self) -> str | None:
        return self.doc.get("name")

    @property
    def donor(self) -> str | None:
        return self.doc.get("graft", {}).get("donor")

    @property
    def text_only(self) -> bool:
        return bool(self.doc.get("strip", {}).get("vision", False))

    @property
    def verify(self) -> dict[str, Any]:
        return dict(self.doc.get("verify", {}))

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.doc.get("card", {}))

    @property
    def serve(self) -> dict[str, Any]:
        """The `[serve]` table: `ServeOptions` fields (checked by `load_recipe`)."""
        return dict(self.doc.get("serve", {}))

    @property
    def publish(self) -> dict[str, Any]:
        """The `[publish]` table: the output's file layout (publish/layout.py)."""
        return dict(self.doc.get("publish", {}))

    def quantize_options(self) -> dict[str, Any]:
        """The `quantize` verb's keyword arguments, with its defaults where the recipe is silent."""
        q = self.doc.get("quantize", {})
        return {"scheme": q.get("scheme", "w4a16"), "group_size": q.get("group_size"), "scope": q.get("scope", "all"),
                "include": tuple(q.get("include", ())), "exclude": tuple(q.get("exclude", ())), "mtp": q.get("mtp", "keep"),
                "text_only": self.text_only, "method": q.get("method", "rtn"), "actorder": bool(q.get("actorder", False)),
                "calibration": q.get("calibration"), "samples": q.get("samples", 64),
                "checkpoint_format": q.get("format", "compressed-tensors"), **self._calibration_options(q)}

    def _calibration_options(self, q: dict[str, Any]) -> dict[str, Any]:
        """The calibration keys (issue 15): how long each text is, the chat template, the head's method, the observer,
        AWQ's smoothing. A relative `calibration` file is read beside the recipe."""
        from mtpforge.quant.calibrated import parse_mappings

        calibration = q.get("calibration")
        if calibration and not Path(calibration).is_absolute() and (self.path.parent / calibration).is_file():
            calibration = str(self.path.parent / calibration)
        return {"calibration": calibration, "seq_len": q.get("seq_len", 512),
                "chat_template": bool(q.get("chat_template", False)), "mtp_method": q.get("mtp_method", "rtn"),
                "observer": q.get("observer", "minmax"),
                "awq_mappings": parse_mappings(q.get("awq_mappings", [])), "head_steps": q.get("head_steps", 1)}

    def heal_options(self) -> dict[str, Any] | None:
        """The `[heal]` table as `heal`'s keyword arguments plus `on` (heal the BF16 trunk's head before quantizing, or
        the quantized trunk's after), or None when the recipe does not heal. A relative `prompts` file is read beside
        the recipe."""
        if "heal" not in self.doc:
            return None
        h = dict(self.doc["heal"])
        prompts = h.get("prompts")
        if prompts and not Path(prompts).is_absolute() and (self.path.parent / prompts).is_file():
            h["prompts"] = str(self.path.parent / prompts)
        return {"on": "bf16", **h}

    def provenance(self, scope_description: str) -> str:
        """The card's line saying how the build was made."""
        o = self.quantize_options()
        return (f"Built by `mtpforge build {self.path.name}`"
                + (f" (recipe of {self.doc['source']})" if self.doc.get("source") else "")
                + f": {o['method'].upper()} {o['scheme']}, {o['observer']} observer, scope {o['scope']} ({scope_description}), "
                + (f"MTP head quantized like the trunk ({o['mtp_method'].upper()}"
                   + (" on the inputs the quantized trunk gives it)" if o["mtp_method"] != "rtn" else ")")
                   if o["mtp"] == "quantize" else "MTP head kept as stored")
                + (", vision tower removed" if self.text_only else "") + ".")


def bundled_recipes() -> dict[str, Path]:
    """The seed recipes shipped with mtpforge, by name."""
    folder = Path(str(resources.files("mtpforge") / "recipes"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """The recipe at `path` (a file, or the name of a bundled recipe), checked.

    Raises:
        UsageError: unreadable TOML, an unknown section or key.
    """
    bundled = bundled_recipes()
    if not Path(path).is_file() and str(path) in bundled:
        path = bundled[str(path)]
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"recipe {path}: {e}", hint=f"a TOML file, or one of: {', '.join(bundled)}") from e
    for key, value in doc.items():
        if key not in RECIPE_SECTIONS or not isinstance(value, RECIPE_SECTIONS[key]):
            raise UsageError(f"recipe {path}: unknown or malformed entry {key!r}", hint=f"entries: {', '.join(RECIPE_SECTIONS)}")
    unknown = set(doc.get("quantize", {})) - QUANTIZE_KEYS
    if unknown:
        raise UsageError(f"recipe {path}: unknown [quantize] keys {sorted(unknown)}",
                         hint=f"keys: {', '.join(sorted(QUANTIZE_KEYS))}")
    unknown_heal = set(doc.get("heal", {})) - HEAL_KEYS
    if unknown_heal or doc.get("heal", {}).get("on", "bf16") not in ("bf16", "quantized"):
        raise UsageError(f"recipe {path}: unknown [heal] keys {sorted(unknown_heal)} or `on` not bf16 / quantized",
                         hint=f"keys: {', '.join(sorted(HEAL_KEYS))}")
    unknown_card = set(doc.get("card", {})) - CARD_KEYS
    if unknown_card:
        raise UsageError(f"recipe {path}: unknown [card] keys {sorted(unknown_card)}",
                         hint=f"keys: {', '.join(sorted(CARD_KEYS))}")
    from mtpforge.engine.launch import serve_options
    from mtpforge.publish.layout import check_layout

    try:
        serve_options(doc.get("serve", {}))
        check_layout(doc.get("publish", {}))
    except UsageError as e:
        raise UsageError(f"recipe {path}: {e}", hint=e.hint) from e
    return Recipe(Path(path), doc)

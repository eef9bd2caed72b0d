"""`mtpforge build RECIPE --base BASE --out OUT`: one recipe file, the whole build, resumable.

Steps, each a verb mtpforge already has:

1. graft   when the base has no MTP head and the recipe names a donor; done
           before quantizing, so `mtp = "quantize"` quantizes the grafted head
           in the same pass as the trunk;
2. quantize with the recipe's scheme, scope and MTP policy; `strip.vision`
           drops the tower in the same pass;
3. doctor  on the result: any error fails the build;
4. verify  against the base: below the recipe's acceptance floor, or above its
           KLD ceiling, fails the build;
5. card    README.md from the checkpoint and the verify document.

Work happens in `OUT.build/`; each step's output and a state file with the
step's inputs live there. A rerun reuses every step whose inputs are
unchanged (an interrupted or failed build resumes where it stopped) and
`OUT` appears, with one rename, only when every step has passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import open_checkpoint
from mtpforge.errors import ChecksFailed, UsageError
from mtpforge.families import MTP, detect_family

RECIPE_SECTIONS = {"name": str, "source": str, "quantize": dict, "graft": dict, "strip": dict, "verify": dict, "card": dict}
QUANTIZE_KEYS = {"method", "scheme", "format", "group_size", "scope", "include", "exclude", "mtp", "actorder", "calibration", "samples"}


@dataclass
class BuildReport:
    recipe: str
    out: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.build/1", **self.__dict__}


def bundled_recipes() -> dict[str, Path]:
    """The seed recipes shipped with mtpforge, by name."""
    from importlib import resources

    folder = Path(str(resources.files("mtpforge") / "recipes"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def load_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe at `path` (a file, or the name of a bundled recipe), checked.

    Raises:
        UsageError: unreadable TOML, an unknown section or key, or a method mtpforge does not run.
    """
    bundled = bundled_recipes()
    if not Path(path).is_file() and str(path) in bundled:
        path = bundled[str(path)]
    try:
        recipe = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"recipe {path}: {e}", hint=f"a TOML file, or one of: {', '.join(bundled)}") from e
    for key, value in recipe.items():
        if key not in RECIPE_SECTIONS or not isinstance(value, RECIPE_SECTIONS[key]):
            raise UsageError(f"recipe {path}: unknown or malformed entry {key!r}", hint=f"entries: {', '.join(RECIPE_SECTIONS)}")
    unknown = set(recipe.get("quantize", {})) - QUANTIZE_KEYS
    if unknown:
        raise UsageError(f"recipe {path}: unknown [quantize] keys {sorted(unknown)}", hint=f"keys: {', '.join(sorted(QUANTIZE_KEYS))}")
    return recipe


def build(recipe_path: str, base: str, out: str, *, donor: str | None = None, min_acceptance: float | None = None,
          progress: Callable[[str], None] = lambda _: None) -> BuildReport:
    """Run `recipe_path` on `base` into `out` (see the module docstring).

    Raises:
        UsageError: bad recipe, `out` exists, or a head is needed and no donor given.
        ChecksFailed: doctor found errors, or verify is below the recipe's floor (the work directory is kept).
    """
    recipe = load_recipe(recipe_path)
    out_dir = Path(out)
    if out_dir.exists():
        raise UsageError(f"{out} exists", hint="choose a new --out; build never overwrites a finished build")
    work = out_dir.with_name(out_dir.name + ".build")
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    report = BuildReport(str(recipe_path), out)

    def step(name: str, inputs: dict[str, Any], run: Callable[[Path], None]) -> Path:
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        target = work / name
        if state.get(name) == key and target.exists():
            progress(f"{name}: reused from an earlier run")
            report.steps.append({"step": name, "reused": True})
            return target
        shutil.rmtree(target, ignore_errors=True)
        progress(f"{name}: running")
        run(target)
        state[name] = key
        state_file.write_text(json.dumps(state, indent=2))
        report.steps.append({"step": name, "reused": False})
        return target

    q = recipe.get("quantize", {})
    source = Path(base).resolve()
    ckpt = open_checkpoint(source)
    family = detect_family(ckpt.config)
    if not any(family.group_of(n) == MTP for n in ckpt.stored):
        donor = donor or recipe.get("graft", {}).get("donor")
        if not donor:
            raise UsageError(f"{base} has no MTP head and the recipe names no donor", hint="pass --donor BASE_WITH_HEAD")
        from mtpforge.surgery.graft import graft

        source = step("graft", {"base": str(source), "donor": donor},
                      lambda t: graft(str(Path(base).resolve()), donor, str(t)))

    from mtpforge.quant import quantize

    text_only = bool(recipe.get("strip", {}).get("vision", False))
    params = {"scheme": q.get("scheme", "w4a16"), "group_size": q.get("group_size"), "scope": q.get("scope", "all"),
              "include": tuple(q.get("include", ())), "exclude": tuple(q.get("exclude", ())), "mtp": q.get("mtp", "keep"),
              "text_only": text_only, "method": q.get("method", "rtn"), "actorder": bool(q.get("actorder", False)),
              "calibration": q.get("calibration"), "samples": q.get("samples", 64), "layout": q.get("format", "compressed-tensors")}
    quantized = step("quantize", {"source": str(source), **params}, lambda t: quantize(str(source), str(t), **params))

    from mtpforge.diagnosis.doctor import doctor

    health = doctor(quantized)
    report.steps.append({"step": "doctor", "errors": health.count("error"), "warnings": health.count("warning")})
    if not health.ok:
        raise ChecksFailed(f"doctor found {health.count('error')} error(s) in the build: "
                           + "; ".join(f"{f.code}: {f.message}" for f in health.findings if f.severity == "error"),
                           hint=f"inspect {quantized} with mtpforge doctor")

    from mtpforge.verify import verify

    v = recipe.get("verify", {})
    floor = min_acceptance if min_acceptance is not None else v.get("min_acceptance")
    progress("verify: measuring acceptance and KLD against the base")
    result = verify(str(quantized), reference=str(Path(base).resolve()), k=v.get("k", 3), new_tokens=v.get("new_tokens", 48),
                    max_prompts=v.get("max_prompts", 8), min_acceptance=floor, max_kld=v.get("max_kld"))
    report.verify = result.to_dict()
    (work / "verify.json").write_text(json.dumps(report.verify, indent=2))
    if result.verdict == "collapsed" or result.failed_thresholds:
        raise ChecksFailed(f"verify: {result.verdict}; " + "; ".join(result.failed_thresholds or result.reasons),
                           hint=f"the work so far is kept in {work}; a rerun resumes there")

    from mtpforge.publish.card import card
    from mtpforge.surgery.stage import write_atomically

    c = recipe.get("card", {})
    from mtpforge.quant.scope import SCOPES

    built_with = (f"Built by `mtpforge build {Path(recipe_path).name}`"
                  + (f" (recipe of {recipe['source']})" if recipe.get("source") else "")
                  + f": {params['method'].upper()} {params['scheme']}, scope {params['scope']} ({SCOPES[params['scope']]}), "
                  + ("MTP head quantized like the trunk" if params["mtp"] == "quantize" else "MTP head kept as stored")
                  + (", vision tower removed" if text_only else "") + ".")
    text = card(quantized, built_with=built_with, name=recipe.get("name") or out_dir.name, base_model=c.get("base_model"),
                verify_file=str(work / "verify.json"), gpus=tuple(c.get("gpus", ())), max_model_len=c.get("max_model_len"), shown_path=out)
    write_atomically(quantized / "README.md", text.encode())
    (quantized / "mtpforge-build.json").write_text(json.dumps({"recipe": recipe, "base": str(Path(base).resolve())}, indent=2))
    report.steps.append({"step": "card"})
    os.rename(quantized, out_dir)
    shutil.rmtree(work)
    return report

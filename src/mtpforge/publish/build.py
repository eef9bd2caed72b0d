"""`mtpforge build RECIPE --base BASE --out OUT`: one recipe file, the whole build, resumable.

Steps, each a verb mtpforge already has:

1. graft   when the base has no MTP head and the recipe names a donor; done
           before quantizing, so `mtp = "quantize"` quantizes the grafted head
           in the same pass as the trunk;
   heal    when the recipe has `[heal]`: the head retrained on the trunk it serves (mtpforge.heal), on the BF16
           trunk before quantizing (`on = "bf16"`, the default) or on the quantized one after (`on = "quantized"`);
2. quantize with the recipe's scheme, scope and MTP policy; `strip.vision`
           drops the tower in the same pass;
   layout  the recipe's `[publish]` file layout (publish/layout.py): shard count or size, names, the head's and
           the tower's own files, indexed; the bytes are copied unchanged;
3. doctor  on the result: any error fails the build;
4. verify  against the base: below the recipe's acceptance floor, or above its
           KLD ceiling, fails the build;
5. card    README.md from the checkpoint and the verify document.

`[publish] chat_template` replaces the chat template after quantizing (publish/template.py).

Work happens in `OUT.build/`; each step's output and a state file with the
step's inputs live there. A rerun reuses every step whose inputs are
unchanged (an interrupted or failed build resumes where it stopped) and
`OUT` appears, with one atomic rename under OUT's lock (`surgery.publish.publish_dir`: never onto an existing
path, never while another run writes OUT), only when every step has passed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import open_checkpoint
from mtpforge.errors import ChecksFailed, UsageError
from mtpforge.families import MTP, detect_family
from mtpforge.publish.layout import LAYOUT_KEYS
from mtpforge.publish.recipe import Recipe, bundled_recipes, load_recipe

__all__ = ["BuildReport", "build", "bundled_recipes", "load_recipe"]


@dataclass
class BuildReport:
    """What each step did (run or reused) and the verify document; `to_dict()` is the `--json` document."""

    recipe: str
    out: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.build/1", **self.__dict__}


@dataclass
class Workspace:
    """`OUT.build/`: one folder per finished step, and `state.json` with the hash of each step's inputs."""

    root: Path
    report: BuildReport
    progress: Callable[[str], None]
    state: dict[str, str] = field(default_factory=dict)

    @classmethod
    def beside(cls, out: Path, report: BuildReport, progress: Callable[[str], None]) -> Workspace:
        root = out.with_name(out.name + ".build")
        root.mkdir(parents=True, exist_ok=True)
        state_file = root / "state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        return cls(root, report, progress, state)

    def step(self, name: str, inputs: dict[str, Any], run: Callable[[Path], object]) -> Path:
        """The folder holding step `name`'s output: reused when its inputs match the last run, else (re)made by `run`."""
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        target = self.root / name
        if self.state.get(name) == key and target.exists():
            self.progress(f"{name}: reused from an earlier run")
            self.report.steps.append({"step": name, "reused": True})
            return target
        shutil.rmtree(target, ignore_errors=True)
        self.progress(f"{name}: running")
        run(target)
        self.state[name] = key
        (self.root / "state.json").write_text(json.dumps(self.state, indent=2))
        self.report.steps.append({"step": name, "reused": False})
        return target


def build(recipe_path: str, base: str, out: str, *, donor: str | None = None, min_acceptance: float | None = None,
          progress: Callable[[str], None] = lambda _: None) -> BuildReport:
    """Run `recipe_path` on `base` into `out` (see the module docstring).

    Args:
        recipe_path: a recipe file, or the name of a bundled recipe (`seed-004-w4a16-g128`).
        base: the BF16 checkpoint to build from.
        out: where the finished build appears (must not exist).
        donor: the checkpoint or hub id to graft a head from, when the base has none (overrides the recipe's).
        min_acceptance: the verify floor (overrides the recipe's).
        progress: called with one line per step.

    Raises:
        UsageError: bad recipe, `out` exists, or a head is needed and no donor given.
        ChecksFailed: doctor found errors, or verify is below the recipe's floor (the work directory is kept).
    """
    recipe = load_recipe(recipe_path)
    template = _template(recipe)  # checked before any work
    out_dir = Path(out)
    if out_dir.exists():
        raise UsageError(f"{out} exists", hint="choose a new --out; build never overwrites a finished build")
    base_dir = Path(base).resolve()
    report = BuildReport(str(recipe_path), out)
    work = Workspace.beside(out_dir, report, progress)

    source = _graft_if_headless(work, base_dir, donor or recipe.donor)
    source = _heal(work, source, recipe, "bf16", after="graft")
    options = recipe.quantize_options()
    quantized = work.step("quantize", {"source": str(source), "key": work.state.get("heal"), **options},
                          lambda t: _quantize(source, t, options))
    quantized = _heal(work, quantized, recipe, "quantized", after="quantize")
    if set(recipe.publish) & LAYOUT_KEYS:
        laid_out = quantized
        quantized = work.step("layout", {"source": str(laid_out), "key": work.state.get("quantize"), **recipe.publish},
                              lambda t: _layout(laid_out, t, recipe.publish))
    if template is not None:
        from mtpforge.publish.template import apply_template

        apply_template(quantized, template)
        report.steps.append({"step": "chat_template", "file": recipe.publish["chat_template"]})
    _doctor(quantized, report)
    _verify(quantized, base_dir, recipe, min_acceptance, work)
    _card(quantized, recipe, base_dir, out, work)
    from mtpforge.surgery.publish import publish_dir

    publish_dir(quantized, out_dir)
    shutil.rmtree(work.root)
    return report


def _graft_if_headless(work: Workspace, base: Path, donor: str | None) -> Path:
    """The base itself when it has a head; else the base with the donor's head grafted (a build step)."""
    ckpt = open_checkpoint(base)
    family = detect_family(ckpt.config)
    if any(family.group_of(n) == MTP for n in ckpt.stored):
        return base
    if not donor:
        raise UsageError(f"{base} has no MTP head and the recipe names no donor", hint="pass --donor BASE_WITH_HEAD")
    from mtpforge.surgery.graft import graft

    return work.step("graft", {"base": str(base), "donor": donor}, lambda t: graft(str(base), donor, str(t)))


def _heal(work: Workspace, source: Path, recipe: Recipe, trunk: str, *, after: str) -> Path:
    """The recipe's `[heal]` step, when it runs on this trunk (`on`: the BF16 one before quantizing, by default, or the
    quantized one after): the head retrained on `source`'s trunk (mtpforge.heal); its held-out before/after go in the report."""
    options = recipe.heal_options()
    if options is None or options.pop("on") != trunk:
        return source
    from mtpforge.heal import heal

    healed = work.step("heal", {"source": str(source), "key": work.state.get(after), **options},
                       lambda t: heal(str(source), str(t), progress=work.progress, **options))
    doc = json.loads((healed / "mtpforge-heal.json").read_text())
    work.report.steps[-1].update({"held_out_mean_acceptance_length": [doc["before"]["mean_acceptance_length"],
                                                                      doc["after"]["mean_acceptance_length"]],
                                  "improved": doc["improved"], "kept": doc["kept"]})
    return healed


def _quantize(source: Path, target: Path, options: dict[str, Any]) -> None:
    from mtpforge.quant import quantize

    quantize(str(source), str(target), **options)


def _template(recipe: Recipe) -> str | None:
    """The recipe's chat template, read and parsed (a path relative to the recipe file)."""
    name = recipe.publish.get("chat_template")
    if name is None:
        return None
    from mtpforge.publish.template import read_template

    return read_template(recipe.path.parent / str(name))


def _layout(source: Path, target: Path, layout: dict[str, Any]) -> None:
    from mtpforge.publish.layout import layout_plan
    from mtpforge.surgery.stage import apply_plan

    apply_plan(layout_plan(open_checkpoint(source), layout), target)


def _doctor(quantized: Path, report: BuildReport) -> None:
    from mtpforge.diagnosis.doctor import doctor

    health = doctor(quantized)
    report.steps.append({"step": "doctor", "errors": health.count("error"), "warnings": health.count("warning")})
    if not health.ok:
        raise ChecksFailed(f"doctor found {health.count('error')} error(s) in the build: "
                           + "; ".join(f"{f.code}: {f.message}" for f in health.findings if f.severity == "error"),
                           hint=f"inspect {quantized} with mtpforge doctor")


def _verify(quantized: Path, base: Path, recipe: Recipe, min_acceptance: float | None, work: Workspace) -> None:
    from mtpforge.verify import verify

    v = recipe.verify
    floor = min_acceptance if min_acceptance is not None else v.get("min_acceptance")
    work.progress("verify: measuring acceptance and KLD against the base")
    result = verify(str(quantized), reference=str(base), k=v.get("k", 3), new_tokens=v.get("new_tokens", 48),
                    max_prompts=v.get("max_prompts", 8), min_acceptance=floor, max_kld=v.get("max_kld"))
    work.report.verify = result.to_dict()
    (work.root / "verify.json").write_text(json.dumps(work.report.verify, indent=2))
    if result.verdict == "collapsed" or result.failed_thresholds:
        raise ChecksFailed(f"verify: {result.verdict}; " + "; ".join(result.failed_thresholds or result.reasons),
                           hint=f"the work so far is kept in {work.root}; a rerun resumes there")


def _card(quantized: Path, recipe: Recipe, base: Path, out: str, work: Workspace) -> None:
    from mtpforge.publish.card import card
    from mtpforge.quant.scope import SCOPES
    from mtpforge.surgery.stage import write_atomically

    c = recipe.card
    scope = recipe.quantize_options()["scope"]
    text = card(quantized, built_with=recipe.provenance(SCOPES[scope]), name=recipe.name or Path(out).name,
                base_model=c.get("base_model"), verify_file=str(work.root / "verify.json"), gpus=tuple(c.get("gpus", ())),
                max_model_len=c.get("max_model_len"), shown_path=out, kv_dtype=c.get("kv_dtype", "fp8"),
                util=c.get("util", recipe.serve.get("util", 0.9)), spec_tokens=c.get("k", recipe.serve.get("spec_tokens")),
                serve=recipe.serve)
    write_atomically(quantized / "README.md", text.encode())
    (quantized / "mtpforge-build.json").write_text(json.dumps({"recipe": recipe.doc, "base": str(base)}, indent=2))
    work.report.steps.append({"step": "card"})

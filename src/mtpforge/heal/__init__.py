"""`mtpforge heal`: retrain a grafted or quantized MTP head on the trunk it now serves, by self-distillation.

A grafted head learned the base's hidden states, not the finetune's; a quantized trunk shifts them again.
`heal` trains the head alone on the checkpoint's own trunk:

1. capture (`heal.data`): the prompts are split into training and held-out; the trunk continues each greedily
   and one pass records its post-norm hidden states and greedy tokens, once, into the work directory;
2. train (`heal.train`): the head runs K chained draft steps as vLLM runs it, against the trunk's distribution
   (`kl`) or its greedy tokens (`ce`), through the frozen `lm_head` in chunks (`heal.loss`); the trunk,
   embeddings and `lm_head` are never trained;
3. evaluate (`heal.evaluate`): `verify`'s acceptance replay on the held-out prompts, before and after, with 95 %
   intervals; every `eval_every` steps, keeping the best head and stopping after `patience` evaluations
   without improvement;
4. write (`heal.write`): the best head in its stored dtype, every other shard linked unchanged, through the one
   stage/publish path (`surgery.stage.apply_plan`).

The work directory (`--work`, default `OUT.heal/` beside OUT) holds the capture and, after every evaluation, the
head, optimizer state and history: a rerun with the same inputs resumes where the last one stopped (a larger
`steps` continues training). It is removed once OUT is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.errors import UsageError
from mtpforge.families import MTP, detect_family
from mtpforge.surgery.stage import apply_plan, check_destination

__all__ = ["HealReport", "heal"]

LOSSES = ("kl", "ce")


@dataclass
class HealReport:
    """What `heal` did; `to_dict()` is the `--json` document and `mtpforge-heal.json` in OUT."""

    checkpoint: str
    out: str
    k: int
    loss: str
    train_sequences: int  # prompt windows continued by the trunk (`heal.data`)
    held_out_sequences: int
    train_tokens: int
    steps: int = 0
    best_step: int = 0
    stopped_early: bool = False
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    improved: bool = False
    kept: str = "original"
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.heal/1", **self.__dict__}

    def render(self) -> str:
        """The human summary: held-out acceptance before and after, with 95 % intervals, and the verdict."""
        lines = [f"heal {self.checkpoint}: {self.steps} steps ({'stopped early' if self.stopped_early else 'all run'}), "
                 f"best at step {self.best_step}; {self.train_sequences} training sequences ({self.train_tokens} tokens), "
                 f"{self.held_out_sequences} held out; loss {self.loss}, k={self.k}, {self.seconds:.0f} s",
                 "  " + f"{'held-out acceptance':<22}" + "".join(f"{f'pos {j} (95% interval)':>22}" for j in range(self.k))
                 + f"{'mean len (95% interval)':>26}{'drafts':>8}"]
        for label, a in (("before (as given)", self.before), ("after (kept head)", self.after)):
            if a:
                rates = "".join(f"{f'{100 * r:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]':>22}"
                                for r, (lo, hi) in zip(a["acceptance_per_position"], a["interval95_per_position"], strict=True))
                mean, (lo, hi) = a["mean_acceptance_length"], a["mean_acceptance_length_interval95"]
                lines.append(f"  {label:<22}{rates}{f'{mean:.3f} [{lo:.3f}-{hi:.3f}]':>26}{a['drafts']:>8}")
        lines.append("  " + ("healed: the held-out mean acceptance length rose beyond both 95% intervals" if self.improved else
                             "the held-out gain is within the 95% intervals" if self.kept == "healed" else
                             "no training step beat the original head on the held-out prompts: the original head is kept"))
        return "\n".join(lines)


def heal(checkpoint: CheckpointLike, out: str, *, prompts: str | None = None, steps: int = 100, k: int = 3, loss: str = "kl",
         lr: float = 2e-3, batch: int = 4, prompt_tokens: int = 32, new_tokens: int = 96, held_out_every: int = 4,
         eval_every: int | None = None, patience: int = 3, work: str | None = None, overwrite: bool = False,
         device: str = "cpu", seed: int = 0, progress: Callable[[str], None] = lambda _: None) -> HealReport:
    """Retrain `checkpoint`'s MTP head on its own trunk and write the result to `out` (see the module docstring).

    Args:
        checkpoint: a checkpoint with an MTP head (grafted, or on a quantized trunk): a directory or an open `Checkpoint`.
        out: the output directory (must not exist unless `overwrite`).
        prompts: a prompt file (JSON list or one per line); default: the bundled set. Every `held_out_every`-th
            prompt is held out for evaluation.
        steps: optimizer steps at most (early stopping may end sooner).
        k: chained draft positions trained and measured (the engine's num_speculative_tokens).
        loss: `kl` (the trunk's distribution) or `ce` (its greedy token).
        lr: AdamW learning rate.
        batch: sequences per optimizer step.
        prompt_tokens: each prompt text is cut into windows of this many tokens, each continued (and trained on).
        new_tokens: greedy tokens generated per prompt.
        held_out_every: hold out every n-th prompt.
        eval_every: evaluate (and save the work state) every this many steps; default: steps // 10.
        patience: stop after this many evaluations without a better held-out mean acceptance length.
        work: the work directory (default: `OUT.heal` beside OUT).
        overwrite: replace `out` if it exists.
        device: where the trunk and the head run (`cpu`, `cuda`).
        seed: seeds the data order.
        progress: called with one line per capture step and per evaluation (with an ETA).

    Raises:
        UsageError: bad options, `out` exists or overlaps the input, or the checkpoint has no MTP head.
    """
    import torch

    from mtpforge.heal.data import Captured, capture
    from mtpforge.heal.evaluate import clearly_better, held_out_acceptance
    from mtpforge.heal.train import Frozen, TrainOptions, TrainState, train
    from mtpforge.heal.write import plan_heal
    from mtpforge.reference.model import load_reference

    started = time.monotonic()
    _check_options(steps, k, loss, lr, batch, prompt_tokens, new_tokens, held_out_every, eval_every, patience)
    out_dir = Path(os.path.abspath(out))
    work_dir = Path(os.path.abspath(work)) if work else out_dir.with_name(out_dir.name + ".heal")
    source = Path(os.fspath(checkpoint))
    check_destination([source], out_dir, overwrite=overwrite)
    check_destination([source], work_dir, overwrite=True)
    ckpt = as_checkpoint(checkpoint)
    _check_head(ckpt)
    torch.manual_seed(seed)
    model = load_reference(ckpt, device=device)
    assert model.head is not None
    head = model.head
    for p in model.trunk.parameters():
        p.requires_grad_(False)

    work_dir.mkdir(parents=True, exist_ok=True)
    data_key = _key({"checkpoint": _fingerprint(ckpt), "prompts": _prompts_digest(prompts), "prompt_tokens": prompt_tokens,
                     "new_tokens": new_tokens, "held_out_every": held_out_every})
    train_key = _key({"data": data_key, "k": k, "loss": loss, "lr": lr, "batch": batch, "seed": seed,
                      "eval_every": eval_every, "patience": patience})
    captured_file, state_file, keys_file = work_dir / "captured.pt", work_dir / "state.pt", work_dir / "inputs.json"
    keys = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    if keys.get("data") == data_key and captured_file.is_file():
        progress(f"capture: reused from {captured_file}")
        captured = Captured.load(captured_file)
    else:
        captured = capture(model, source, prompts=prompts, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                           held_out_every=held_out_every, progress=progress)
        captured.save(captured_file)
        keys = {"data": data_key}
        keys_file.write_text(json.dumps(keys))
    state = TrainState()
    if keys.get("train") == train_key and state_file.is_file():
        state = TrainState.load(state_file)
        progress(f"train: resuming at step {state.step} from {state_file}")
    keys["train"] = train_key
    keys_file.write_text(json.dumps(keys))

    report = HealReport(os.fspath(checkpoint), out, k, loss, len(captured.train), len(captured.held_out), captured.train_tokens)
    original = {n: t.detach().clone() for n, t in head.state_dict().items()}
    report.before = held_out_acceptance(model, head, captured.held_out, k)
    frozen = Frozen(model.trunk.model.embed_tokens.weight.detach(), model.trunk.lm_head.weight.detach())
    options = TrainOptions(steps, k, loss, lr, batch, eval_every or max(1, steps // 10), patience, seed)
    state = train(head, frozen, captured, options, state, save=lambda s: s.save(state_file), progress=progress,
                  evaluate=lambda h: float(held_out_acceptance(model, h, captured.held_out, k)["mean_acceptance_length"]))

    head.load_state_dict(state.best_head or original)
    report.after = held_out_acceptance(model, head, captured.held_out, k)
    report.steps, report.best_step, report.stopped_early, report.history = state.step, state.best_step, state.stopped_early, \
        state.history
    report.improved = clearly_better(report.after, report.before)
    report.kept = "healed" if state.best_step > 0 else "original"
    report.seconds = round(time.monotonic() - started, 1)
    plan = plan_heal(ckpt, head.state_dict(), {k: v for k, v in report.to_dict().items() if k != "plan"})
    report.plan = plan.to_dict()
    apply_plan(plan, out_dir, overwrite=overwrite)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report


def _check_options(steps: int, k: int, loss: str, lr: float, batch: int, prompt_tokens: int, new_tokens: int,
                   held_out_every: int, eval_every: int | None, patience: int) -> None:
    if loss not in LOSSES:
        raise UsageError(f"--loss {loss!r} is not one of {', '.join(LOSSES)}")
    bad = [f"{name} {value}" for name, value, low in (("--steps", steps, 1), ("--k", k, 1), ("--batch", batch, 1),
                                                     ("--prompt-tokens", prompt_tokens, 1), ("--new-tokens", new_tokens, k + 2),
                                                     ("--held-out-every", held_out_every, 2), ("--patience", patience, 1),
                                                     ("--eval-every", eval_every or 1, 1)) if value < low]
    if bad or not 0 < lr < 1:
        raise UsageError(f"heal: out of range: {', '.join(bad) or f'--lr {lr}'}",
                         hint="steps, k, batch, prompt tokens, patience >= 1; new tokens >= k + 2; held-out-every >= 2; "
                              "0 < lr < 1")


def _check_head(ckpt: Any) -> None:
    family = detect_family(ckpt.config)
    if not any(family.group_of(n) == MTP for n in ckpt.stored):
        raise UsageError(f"{ckpt.root} has no MTP head to heal",
                         hint=f"graft one first: mtpforge graft {ckpt.root} --donor BASE --out {ckpt.root}-mtp")
    layers = family.mtp_layers(ckpt.config)
    if layers != 1:
        raise UsageError(f"{ckpt.root}: heal trains one-layer MTP heads (as Qwen3.5/3.6 and Qwen3-Next ship); "
                         f"this one has {layers}",
                         hint="heal the head with the training stack of its family")


def _fingerprint(ckpt: Any) -> dict[str, Any]:
    """What identifies the input: its config and every tensor's place, and each shard's size and modification time."""
    files = {}
    for name in sorted(ckpt.headers):
        st = os.stat(ckpt.root / name)
        files[name] = [st.st_size, st.st_mtime_ns]
    return {"root": str(Path(ckpt.root).resolve()), "config": ckpt.config, "files": files}


def _prompts_digest(prompts: str | None) -> str:
    from mtpforge.prompts import load_prompts

    return hashlib.sha256(json.dumps(load_prompts(prompts)).encode()).hexdigest()


def _key(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

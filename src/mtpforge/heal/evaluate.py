"""Held-out acceptance: `verify`'s measurement (its teacher-forced acceptance, equal to the engine loop's, and its
Wilson intervals) on the held-out prompts.

The trunk is not run again: the measurement reads the hidden states captured once (`heal.data`), so an evaluation
costs only the head and `lm_head`. Per-position rates come with 95 % Wilson intervals (`verify.stats`); the mean
acceptance length, an average of per-draft accepted counts 0..K, with a 95 % normal interval from the histogram.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mtpforge.heal.data import Sequence
from mtpforge.reference.model import ReferenceModel
from mtpforge.reference.mtp import MtpHead
from mtpforge.verify.teacher_forced import teacher_forced_acceptance

Z95 = 1.959964


@torch.no_grad()
def held_out_acceptance(model: ReferenceModel, head: MtpHead, held_out: list[Sequence], k: int) -> dict[str, Any]:
    """`verify`'s acceptance document for `head` on the held-out sequences, plus the mean length's interval."""
    runner = ReferenceModel(model.trunk, head, model.name)
    hiddens = [s.hidden[None].to(model.device, torch.float32) for s in held_out]
    result = teacher_forced_acceptance(runner, [(s.prompt_len, s.ids.tolist()) for s in held_out], k, hiddens=hiddens).to_dict()
    histogram = result["histogram"]
    assert isinstance(histogram, list)
    low, high = mean_length_interval(histogram)
    return {**result, "mean_acceptance_length_interval95": [round(low, 4), round(high, 4)]}


def mean_length_interval(histogram: list[int]) -> tuple[float, float]:
    """95 % interval of the mean acceptance length `1 + mean(accepted)` from the histogram of accepted counts."""
    n = sum(histogram)
    if n < 2:
        return 1.0, 1.0 + len(histogram) - 1
    mean = sum(i * c for i, c in enumerate(histogram)) / n
    var = sum(c * (i - mean) ** 2 for i, c in enumerate(histogram)) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return 1 + mean - half, 1 + mean + half


def clearly_better(after: dict[str, Any], before: dict[str, Any]) -> bool:
    """True when the two 95 % intervals of the mean acceptance length do not overlap and `after` is the higher."""
    return bool(after["mean_acceptance_length_interval95"][0] > before["mean_acceptance_length_interval95"][1])

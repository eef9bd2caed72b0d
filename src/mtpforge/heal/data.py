"""The training data of `heal`: the checkpoint's own trunk, captured once.

Each prompt text is cut into consecutive `prompt_tokens` windows, the trunk continues each greedily for `new_tokens`
(what the engine's target model emits at temperature 0), and one trunk pass over each whole sequence records, per position t, the
post-final-norm hidden state (what the MTP head reads) and the trunk's greedy next token (what a draft is checked
against). The head never needs the trunk again: training and the held-out acceptance read these tensors.

Prompts are split deterministically: every `held_out_every`-th prompt is held out for evaluation only.
Hidden states are kept in float32 when small and in bfloat16 beyond `BF16_ABOVE_BYTES` (a 27B trunk: 10 KiB per
token), saved once to the work directory and memory-mapped back on a resumed run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mtpforge.errors import UsageError
from mtpforge.prompts import load_prompts, tokenize
from mtpforge.reference.model import ReferenceModel

BF16_ABOVE_BYTES = 1 << 30


@dataclass
class Sequence:
    """One prompt and its greedy continuation, with the trunk's view of every position."""

    ids: torch.Tensor  # [n] int64: prompt then continuation
    hidden: torch.Tensor  # [n, H]: post-final-norm hidden state at each position
    greedy: torch.Tensor  # [n] int64: the trunk's greedy token after each position (greedy[t] predicts ids[t + 1])
    prompt_len: int


@dataclass
class Captured:
    """The captured sequences, split into training and held-out."""

    train: list[Sequence]
    held_out: list[Sequence]

    @property
    def train_tokens(self) -> int:
        return sum(len(s.ids) for s in self.train)

    def save(self, path: Path) -> None:
        doc = {name: [{"ids": s.ids, "hidden": s.hidden, "greedy": s.greedy, "prompt_len": s.prompt_len} for s in seqs]
               for name, seqs in (("train", self.train), ("held_out", self.held_out))}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(doc, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Captured:
        doc = torch.load(path, mmap=True, weights_only=True)
        return cls(*([Sequence(d["ids"], d["hidden"], d["greedy"], int(d["prompt_len"])) for d in doc[name]]
                     for name in ("train", "held_out")))


def split_prompts(texts: list[str], held_out_every: int) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out prompts: every `held_out_every`-th prompt (starting at the first) is held out."""
    held = [i for i in range(len(texts)) if i % held_out_every == 0]
    train = [i for i in range(len(texts)) if i % held_out_every != 0]
    if not train or not held:
        raise UsageError(f"{len(texts)} prompt(s) cannot be split into training and held-out (every {held_out_every}th held out)",
                         hint="give --prompts a file with at least 4 prompts")
    return train, held


def windows(ids: list[int], size: int) -> list[list[int]]:
    """Consecutive `size`-token windows of a prompt (a shorter prompt is its own window): each is a prompt the trunk
    continues, so a few long texts give many draft chains."""
    return [ids[i : i + size] for i in range(0, len(ids) - size + 1, size)] or [ids]


def capture(model: ReferenceModel, checkpoint: Path, *, prompts: str | None, prompt_tokens: int, new_tokens: int,
            held_out_every: int, progress: Callable[[str], None], batch: int = 32) -> Captured:
    """Tokenize, continue greedily and record the trunk's hidden states and greedy tokens (see the module docstring).

    Each prompt text gives its consecutive `prompt_tokens` windows; windows of one length are continued together,
    `batch` at a time (same length, so no padding: each row is what a one-prompt greedy decode gives).
    """
    texts = load_prompts(prompts)
    _, held_idx = split_prompts(texts, held_out_every)
    prompt_ids = tokenize(checkpoint, texts, 1 << 20)
    if len(prompt_ids) != len(texts):
        raise UsageError(f"--prompts {prompts}: {len(texts) - len(prompt_ids)} prompt(s) encode to no tokens",
                         hint="remove the empty prompts")
    jobs = [(i, w) for i, ids in enumerate(prompt_ids) for w in windows(ids, prompt_tokens)]
    total = len(jobs) * (prompt_tokens + new_tokens) * model.trunk.config.hidden_size * 4
    dtype = torch.bfloat16 if total > BF16_ABOVE_BYTES else torch.float32
    by_length: dict[int, list[int]] = {}
    for j, (_, w) in enumerate(jobs):
        by_length.setdefault(len(w), []).append(j)
    done: dict[int, Sequence] = {}
    start = time.monotonic()
    for members in by_length.values():
        for s in range(0, len(members), batch):
            chunk = members[s : s + batch]
            for j, seq in zip(chunk, _continue([jobs[j][1] for j in chunk], model, new_tokens, dtype), strict=True):
                done[j] = seq
            elapsed = time.monotonic() - start
            progress(f"capture: {len(done)}/{len(jobs)} prompt windows continued, {elapsed:.0f} s, "
                     f"ETA {elapsed / len(done) * (len(jobs) - len(done)):.0f} s")
    held = set(held_idx)
    train = [done[j] for j, (i, _) in enumerate(jobs) if i not in held]
    return Captured(train, [done[j] for j, (i, _) in enumerate(jobs) if i in held])


@torch.no_grad()
def _continue(prompts: list[list[int]], model: ReferenceModel, new_tokens: int, dtype: torch.dtype) -> list[Sequence]:
    """Greedy continuations of equal-length prompts, in one batch, and the trunk's view of each whole sequence."""
    ids = torch.tensor(prompts, device=model.device)
    full = model.trunk.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                                min_new_tokens=new_tokens, pad_token_id=0)
    hidden = model.trunk.model(input_ids=full).last_hidden_state
    return [Sequence(full[b].cpu(), hidden[b].to("cpu", dtype), greedy_tokens(hidden[b], model.trunk.lm_head.weight).cpu(),
                     ids.shape[1]) for b in range(len(prompts))]


@torch.no_grad()
def greedy_tokens(hidden: torch.Tensor, lm_head: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """argmax of `hidden @ lm_head.T` row by row in chunks, never holding all positions' full-vocab logits."""
    rows = rows or chunk_rows(lm_head.shape[0])
    out = [(hidden[s : s + rows].to(lm_head.dtype) @ lm_head.T).argmax(-1) for s in range(0, hidden.shape[0], rows)]
    return torch.cat(out)


def chunk_rows(vocab: int, budget: int = 1 << 24) -> int:
    """Rows of full-vocab logits per chunk: about `budget` floats (64 MiB in float32) at a time."""
    return max(1, budget // vocab)

"""Train the MTP head alone, chained over K draft steps exactly as vLLM runs it (`verify.acceptance` replays the same loop).

For a sequence of n tokens and every chain start t at once:

- step 1 reads the trunk's hidden state at t and the embedding of token t+1, at position t, attending causally
  to the step-1 entries of positions 0..t (the head re-runs over accepted tokens, so its KV cache holds them);
- step j > 1 reads step j-1's output hidden state and step j-1's own draft token (its greedy token), at position
  t+j-1, attending to the step-1 entries of positions 0..t and to its own chain's entries of steps 2..j;
- step j's target is the trunk's greedy token after position t+j (`ce`) or its distribution there (`kl`).

All chains of a step run in one batched call with an explicit attention mask; gradients flow through the whole
chain (a later step's loss reaches the earlier steps through the hidden state and the KV entries, as at inference).
A chained step counts only the chains whose earlier drafts all hit: the others are rejected by the engine, so
their later drafts are never checked.

The trunk, embeddings and lm_head are frozen tensors, never parameters: only the head's weights see an optimizer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from mtpforge.heal.data import Captured, Sequence
from mtpforge.heal.loss import distill_loss
from mtpforge.reference.mtp import MtpHead


@dataclass(frozen=True)
class Frozen:
    """What the head shares with the trunk and must not change."""

    embed: torch.Tensor  # embed_tokens.weight [V, H]
    lm_head: torch.Tensor  # lm_head.weight [V, H]


@dataclass(frozen=True)
class TrainOptions:
    steps: int
    k: int
    loss: str  # "kl" or "ce"
    lr: float
    batch: int  # sequences per optimizer step
    eval_every: int
    patience: int  # evaluations without improvement before stopping
    seed: int = 0


@dataclass
class TrainState:
    """Everything a resumed run needs; saved to `state.pt` after every evaluation."""

    step: int = 0
    best_step: int = 0
    best_score: float = -math.inf
    best_head: dict[str, torch.Tensor] = field(default_factory=dict)
    evals_since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    optimizer: dict[str, Any] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.__dict__, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**torch.load(path, weights_only=True))


def head_step(head: MtpHead, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, step: int,
              cache: DynamicCache, mask: torch.Tensor | None) -> torch.Tensor:
    """`MtpHead.forward` with an explicit attention mask (the chained steps need one); the same modules in the same order."""
    x = head.fc(torch.cat([head.pre_fc_norm_embedding(embeds), head.pre_fc_norm_hidden(hidden)], dim=-1))
    rope_positions = positions[None].expand(3, *positions.shape) if head.mrope else positions
    position_embeddings = head.rotary_emb(x, rope_positions)
    layer = head.layers[step % len(head.layers)]
    x = layer(x, position_embeddings=position_embeddings, attention_mask=mask, position_ids=positions, past_key_values=cache,
              use_cache=True)
    return head.norm(x)


def chain_mask(step1: int, later: list[int], rows: int) -> torch.Tensor:
    """[1, 1, rows, keys] bool: chain t sees step-1 keys 0..t, and key t of each later step's block (its own chain)."""
    keys = step1 + sum(later)
    mask = torch.zeros(rows, keys, dtype=torch.bool)
    t = torch.arange(rows)
    mask[:, :step1] = t[:, None] >= torch.arange(step1)[None]
    offset = step1
    for size in later:
        mask[t, offset + t] = True
        offset += size
    return mask[None, None]


@dataclass
class ChainResult:
    loss: torch.Tensor
    hits: list[int]  # per step: chains whose drafts up to this step all hit
    chains: int  # step-1 chains


def chain_loss(head: MtpHead, frozen: Frozen, seq: Sequence, k: int, loss: str) -> ChainResult:
    """The summed per-step loss of every draft chain of `seq` (see the module docstring)."""
    device = frozen.lm_head.device
    ids, greedy = seq.ids.to(device), seq.greedy.to(device)
    trunk = seq.hidden.to(device, torch.float32)
    n = ids.shape[0]
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    sizes: list[int] = []
    prev, tokens = trunk[: n - 1], ids[1:]
    alive = torch.ones(n - 1, dtype=torch.bool, device=device)  # chains whose drafts so far all hit
    total = torch.zeros((), device=device)
    hits: list[int] = []
    for j in range(1, k + 1):
        m = n - j  # chains t = 0..m-1 have a target at t + j
        if m <= 0:
            break
        cache = DynamicCache(config=head.config)
        mask = None
        if j > 1:
            cache.update(torch.cat(keys, dim=2), torch.cat(values, dim=2), 0)
            mask = chain_mask(sizes[0], [*sizes[1:], m], m).to(device)
        positions = (torch.arange(m, device=device) + j - 1)[None]
        out = head_step(head, torch.nn.functional.embedding(tokens[:m], frozen.embed)[None], prev[:m][None], positions, j - 1,
                        cache, mask)[0]
        layer = cache.layers[0]
        keys.append(layer.keys[:, :, -m:])
        values.append(layer.values[:, :, -m:])
        sizes.append(m)
        alive = alive[:m]
        step_loss, drafts, hit = distill_loss(out, frozen.lm_head, greedy[j : j + m],
                                              teacher=trunk[j : j + m] if loss == "kl" else None, weights=alive.float())
        total = total + step_loss
        alive = alive & hit
        hits.append(int(alive.sum()))
        prev, tokens = out, drafts
    return ChainResult(total, hits, n - 1)


def batches(captured: Captured, step: int, batch: int, seed: int) -> list[Sequence]:
    """The sequences of optimizer step `step`: a fixed shuffle per epoch, so that a resumed run sees what it would have."""
    n = len(captured.train)
    out = []
    for i in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(i, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(captured.train[int(order[pos])])
    return out


def train(head: MtpHead, frozen: Frozen, captured: Captured, options: TrainOptions, state: TrainState, *,
          evaluate: Callable[[MtpHead], float], save: Callable[[TrainState], None],
          progress: Callable[[str], None]) -> TrainState:
    """Run (or resume) training until `options.steps`, evaluating every `eval_every` steps and stopping early after
    `patience` evaluations without a better held-out score; `state.best_head` is the best head seen (step 0 included)."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if state.optimizer:
        head.load_state_dict(state.head)
        optimizer.load_state_dict(state.optimizer)
    if not state.history:
        _record(state, head, evaluate(head), None, [])
        save(state)
    start, first = time.monotonic(), state.step
    window: list[float] = []
    rates: list[float] = []
    head.train()
    while state.step < options.steps and not state.stopped_early:
        optimizer.zero_grad(set_to_none=True)
        counts = [0] * options.k
        chains = 0
        for seq in batches(captured, state.step, options.batch, options.seed):
            result = chain_loss(head, frozen, seq, options.k, options.loss)
            (result.loss / options.batch).backward()
            counts = [c + h for c, h in zip(counts, result.hits, strict=False)]
            chains += result.chains
            window.append(float(result.loss.detach()))
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        rates = [c / max(chains, 1) for c in counts]
        if state.step % options.eval_every == 0 or state.step == options.steps:
            head.eval()
            score = evaluate(head)
            head.train()
            _record(state, head, score, sum(window) / max(len(window), 1), rates)
            window = []
            state.stopped_early = state.evals_since_best >= options.patience
            state.head, state.optimizer = _clone(head.state_dict()), optimizer.state_dict()
            save(state)
            elapsed = time.monotonic() - start
            eta = elapsed / (state.step - first) * (options.steps - state.step)
            progress(f"heal: step {state.step}/{options.steps}, loss {state.history[-1]['loss']:.4f}, "
                     f"train acceptance {' '.join(f'{r:.2f}' for r in rates)}, held-out mean acceptance length {score:.3f} "
                     f"(best {state.best_score:.3f} at step {state.best_step}), {elapsed:.0f} s, ETA {eta:.0f} s"
                     + ("; stopping: no better held-out acceptance" if state.stopped_early else ""))
    head.eval()
    return state


def _record(state: TrainState, head: MtpHead, score: float, loss: float | None, rates: list[float]) -> None:
    state.history.append({"step": state.step, "loss": loss, "train_acceptance": [round(r, 4) for r in rates],
                          "held_out_mean_acceptance_length": round(score, 4)})
    if score > state.best_score:
        state.best_score, state.best_step, state.best_head = score, state.step, _clone(head.state_dict())
        state.evals_since_best = 0
    else:
        state.evals_since_best += 1


def _clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sd.items()}

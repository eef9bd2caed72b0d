"""Greedy MTP acceptance per draft position from one trunk pass per sequence (teacher forcing).

The engine loop (`verify.acceptance`) decodes token by token; but under greedy
decoding the sequence it produces is known in advance (it is the trunk's greedy
continuation, or the text the engine scored), so every draft the head would make
can be computed at once:

1. one trunk pass over the sequence gives the post-norm hidden state at every
   position and the trunk's greedy token after it (the target);
2. step 1 of the head runs over all positions at once (causal), reading hidden
   state t and token t+1 at position t; its KV entries are the head's cache, as
   in vLLM, where the head re-runs over every accepted token;
3. step s > 1 runs for every chain start t at once, at position t + s - 1, from
   step s-1's hidden output and its own draft token. An attention mask gives each
   chain exactly the keys the engine's would see: step-1 keys of positions 0..t
   plus its own earlier chained entries, never another chain's.

Walking the drafts with the engine's rule (advance by the accepted drafts plus the
bonus token) then counts exactly what the loop counts, from the same drafts.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from mtpforge.verify.stats import Acceptance


def chain_starts(prompt_len: int, length: int, k: int) -> range:
    """The positions t a k-draft chain can start from: the last prompt token onwards, while t + 1 + k < length - 1."""
    return range(max(prompt_len - 1, 0), max(length - 2 - k, prompt_len - 1, 0))


@torch.no_grad()
def chained_drafts(model: Any, ids: torch.Tensor, hidden: torch.Tensor, starts: range, k: int) -> torch.Tensor:
    """The head's k greedy drafts for each chain start, [len(starts), k] (draft j predicts token t + 2 + j).

    Args:
        model: a reference model (`embed`, `logits`, `head`, `device`): in memory or streamed.
        ids: the sequence [1, n].
        hidden: the trunk's post-norm hidden states over it, [1, n, H].
        starts: chain starts (`chain_starts`).
        k: draft positions.
    """
    head = model.head
    n, device = ids.shape[1], model.device
    ids = ids.to(device)
    cache = head.new_cache()
    step1 = head(model.embed(ids[:, 1:]), hidden[:, : n - 1], torch.arange(n - 1, device=device)[None], cache=cache)
    t = torch.tensor(list(starts), device=device)
    m = len(t)
    drafts = torch.zeros(m, k, dtype=torch.long, device=device)
    if m == 0:
        return drafts
    chain = step1[:, t]
    drafts[:, 0] = model.logits(chain)[0].argmax(-1)
    # per cache slot (head layer): its keys, values, and which of them each chain's query may see
    seen = {0: (cache.layers[0].keys, cache.layers[0].values, torch.arange(n - 1, device=device)[None] <= t[:, None])}
    own = torch.eye(m, dtype=torch.bool, device=device)
    for step in range(1, k):
        slot = step % len(head.layers)
        chained = DynamicCache(config=head.config)
        if slot in seen:
            keys, values, visible = seen[slot]
            chained.update(keys, values, slot)
        else:
            visible = torch.zeros(m, 0, dtype=torch.bool, device=device)
        mask = torch.cat([visible, own], 1)
        chain = head(model.embed(drafts[:, step - 1][None]), chain, (t + step)[None], step=step, cache=chained,
                     attention_mask=mask[None, None])
        seen[slot] = (chained.layers[slot].keys, chained.layers[slot].values, mask)
        drafts[:, step] = model.logits(chain)[0].argmax(-1)
    return drafts


def count_chains(result: Acceptance, target: list[int], drafts: list[list[int]], starts: range, length: int) -> None:
    """Walk the engine's greedy loop over precomputed drafts: count each chain it runs, advance past its accepted drafts."""
    k = result.k
    t = starts.start
    while t + 1 + k < length - 1:
        chain = drafts[t - starts.start]
        accepted = 0
        while accepted < k and chain[accepted] == target[t + 1 + accepted]:
            accepted += 1
        result.add(accepted)
        t += accepted + 1


@torch.no_grad()
def teacher_forced_acceptance(model: Any, sequences: list[tuple[int, list[int]]], k: int,
                              hiddens: list[torch.Tensor] | None = None) -> Acceptance:
    """Acceptance per draft position over (prompt length, sequence) pairs, from one trunk pass per sequence.

    Equal to `verify.acceptance.measure_acceptance` (the token-by-token loop) on the same sequences.
    `hiddens`: the trunk's hidden states over the sequences, when already computed (`model.hidden_states`).
    """
    if model.head is None:
        raise ValueError("the model has no MTP head")
    result = Acceptance(k)
    if hiddens is None:
        hiddens = model.hidden_states([seq for _, seq in sequences])
    for (prompt_len, seq), hidden in zip(sequences, hiddens, strict=True):
        ids = torch.tensor([seq])
        target = model.logits(hidden.to(model.device))[0].argmax(-1).tolist()
        starts = chain_starts(prompt_len, len(seq), k)
        drafts = chained_drafts(model, ids, hidden.to(model.device), starts, k).tolist()
        count_chains(result, target, drafts, starts, len(seq))
    return result

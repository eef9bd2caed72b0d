"""MTP acceptance per draft position under greedy decoding, simulated the way the engine runs it.

For each prompt the trunk decodes greedily; that sequence is the target. The
engine loop is then replayed: at the last accepted position t the head drafts
k tokens in a chain (step 1 reads the trunk's post-norm hidden state at t and
token t+1; step j+1 reads step j's hidden state and draft), the drafts are
checked against the target, and decoding advances by the accepted drafts plus
the bonus token. As in vLLM, the head's KV cache holds step-1 entries for
every earlier position (the head re-runs over accepted tokens), and each
chained step attends to them at positions t+1, t+2, ...

Per-position acceptance is vLLM's: `accepted_pos[j] / drafts`, where position
j counts only when drafts 0..j were all accepted; mean acceptance length is
`1 + accepted / drafts`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from mtpforge.reference.model import ReferenceModel
from mtpforge.verify.stats import Acceptance

__all__ = ["Acceptance", "greedy_continuation", "measure_acceptance"]


@torch.no_grad()
def greedy_continuation(model: ReferenceModel, prompt: list[int], new_tokens: int) -> list[int]:
    """The prompt followed by the trunk's greedy continuation (the target the drafts are checked against)."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.trunk.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                               min_new_tokens=new_tokens, pad_token_id=0)
    return out[0].tolist()


@torch.no_grad()
def measure_acceptance(model: ReferenceModel, sequences: list[tuple[int, list[int]]], k: int) -> Acceptance:
    """Replay the engine's greedy draft-and-verify loop over each (prompt length, sequence)."""
    if model.head is None:
        raise ValueError("the model has no MTP head")
    result = Acceptance(k)
    for prompt_len, seq in sequences:
        _replay(model, prompt_len, seq, k, result)
    return result


def _replay(model: ReferenceModel, prompt_len: int, seq: list[int], k: int, result: Acceptance) -> None:
    head = model.head
    assert head is not None
    ids = torch.tensor([seq], device=model.device)
    hidden, logits = model.trunk_forward(ids)
    target = logits[0].argmax(-1).tolist()  # target[t] is the trunk's greedy token after position t
    n = len(seq)
    # Step 1 at every position at once (causal): reads hidden[t] and token t+1, at position t.
    cache = head.new_cache()
    step1 = head(model.embed(ids[:, 1:]), hidden[:, : n - 1], torch.arange(n - 1, device=model.device)[None], cache=cache)
    keys, values = cache.layers[0].keys, cache.layers[0].values
    t = prompt_len - 1  # the last prompt token: its next token is the first the engine samples
    while t + 1 + k < n - 1:
        # the engine has just sampled seq[t + 1]; it drafts seq[t + 2 .. t + 1 + k]
        chain_hidden = step1[:, t : t + 1]
        draft = int(model.logits(chain_hidden)[0, -1].argmax())
        accepted = 0
        if draft == target[t + 1]:
            accepted = 1
            chained = DynamicCache(config=head.config)
            chained.update(keys[:, :, : t + 1].clone(), values[:, :, : t + 1].clone(), 0)
            for step in range(1, k):
                pos = t + step
                chain_hidden = head(model.embed(torch.tensor([[draft]])), chain_hidden,
                                    torch.tensor([[pos]], device=model.device), step=step, cache=chained)
                draft = int(model.logits(chain_hidden)[0, -1].argmax())
                if draft != target[pos + 1]:
                    break
                accepted += 1
        result.add(accepted)
        t += accepted + 1

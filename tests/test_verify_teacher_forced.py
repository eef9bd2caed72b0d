"""Teacher-forced acceptance in one pass, and the streamed reference runtime, against the token-by-token loop
and the in-memory runtime on the bundled tiny model (a trained Qwen3.5 trunk + MTP head) and factory fixtures."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from transformers.cache_utils import DynamicCache  # noqa: E402

from mtpforge.prompts import load_prompts, tokenize  # noqa: E402
from mtpforge.reference.model import ReferenceModel, load_reference  # noqa: E402
from mtpforge.reference.streamed import open_streamed  # noqa: E402
from mtpforge.verify.acceptance import greedy_continuation, measure_acceptance  # noqa: E402
from mtpforge.verify.teacher_forced import chain_starts, chained_drafts, teacher_forced_acceptance  # noqa: E402

warnings.filterwarnings("ignore")
TINY = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models" / "tiny-qwen3.5"
Make = Callable[..., Path]


@pytest.fixture(scope="module")
def tiny() -> ReferenceModel:
    return load_reference(TINY)


@pytest.fixture(scope="module")
def tiny_sequences(tiny: ReferenceModel) -> list[tuple[int, list[int]]]:
    prompts = tokenize(TINY, load_prompts(None)[:4], 24)
    return [(len(p), greedy_continuation(tiny, p, 40)) for p in prompts]


def one_chain_at_a_time(model: ReferenceModel, seq: list[int], t: int, k: int) -> list[int]:
    """The k drafts of the chain starting at t, the way the engine makes them: one query at a time, the head's
    step-1 cache of positions 0..t, then its own chained entries (the loop of `verify.acceptance`, without its early stop)."""
    head = model.head
    assert head is not None
    ids = torch.tensor([seq])
    hidden, _ = model.trunk_forward(ids)
    cache = head.new_cache()
    step1 = head(model.embed(ids[:, 1:]), hidden[:, :-1], torch.arange(len(seq) - 1)[None], cache=cache)
    chained = DynamicCache(config=head.config)
    chained.update(cache.layers[0].keys[:, :, : t + 1], cache.layers[0].values[:, :, : t + 1], 0)
    h = step1[:, t : t + 1]
    drafts = [int(model.logits(h)[0, -1].argmax())]
    for step in range(1, k):
        h = head(model.embed(torch.tensor([[drafts[-1]]])), h, torch.tensor([[t + step]]), step=step, cache=chained)
        drafts.append(int(model.logits(h)[0, -1].argmax()))
    return drafts


def test_one_pass_counts_exactly_what_the_loop_counts_on_the_tiny_model(tiny: ReferenceModel,
                                                                        tiny_sequences: list[tuple[int, list[int]]]) -> None:
    for k in (1, 3):
        loop = measure_acceptance(tiny, tiny_sequences, k)
        one_pass = teacher_forced_acceptance(tiny, tiny_sequences, k)
        assert one_pass.to_dict() == loop.to_dict()
        assert loop.drafts > 40 and loop.accepted_per_pos[0] > loop.drafts // 3  # a trained head: the chains go deep


def test_one_pass_makes_the_engines_drafts_for_every_chain(tiny: ReferenceModel,
                                                           tiny_sequences: list[tuple[int, list[int]]]) -> None:
    prompt_len, seq = tiny_sequences[0]
    starts = chain_starts(prompt_len, len(seq), 3)
    hidden = tiny.hidden_states([seq])[0]
    batched = chained_drafts(tiny, torch.tensor([seq]), hidden, starts, 3).tolist()
    assert batched == [one_chain_at_a_time(tiny, seq, t, 3) for t in starts]


def test_a_two_layer_head_alternates_layers_and_caches_like_the_loop(make: Make) -> None:
    model = load_reference(make("two", mtp_layers=2, vision=False))
    seq = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79]
    starts = chain_starts(4, len(seq), 4)
    drafts = chained_drafts(model, torch.tensor([seq]), model.hidden_states([seq])[0], starts, 4).tolist()
    assert drafts == [one_chain_at_a_time(model, seq, t, 4) for t in starts]


def test_the_streamed_runtime_computes_what_the_in_memory_one_does(tiny: ReferenceModel,
                                                                    tiny_sequences: list[tuple[int, list[int]]]) -> None:
    streamed = open_streamed(TINY)
    seqs = [s for _, s in tiny_sequences[:2]]
    for ours, theirs in zip(streamed.hidden_states(seqs), tiny.hidden_states(seqs), strict=True):
        assert torch.equal(ours, theirs)
        assert torch.equal(streamed.logits(ours).argmax(-1), tiny.logits(theirs).argmax(-1))
    ids = torch.tensor([seqs[0]])
    assert torch.equal(streamed.embed(ids), tiny.embed(ids))  # rows read from the shard, not a resident table
    assert teacher_forced_acceptance(streamed, tiny_sequences, 3).to_dict() == \
        teacher_forced_acceptance(tiny, tiny_sequences, 3).to_dict()


@pytest.mark.parametrize("family,fused", [("qwen3_5_moe", True), ("qwen3_5_moe", False), ("qwen3_next", False)])
def test_the_streamed_runtime_runs_the_moe_and_next_families(make: Make, family: str, fused: bool) -> None:
    path = make("m", family=family, fused_experts=fused)
    seq = [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    ours, theirs = open_streamed(path).hidden_states(seq)[0], load_reference(path).hidden_states(seq)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_head_that_reproduces_the_trunk_accepts_everything_in_one_pass(make: Make) -> None:
    model = open_streamed(make("c", engine=True, constant=True, vision=False))
    result = teacher_forced_acceptance(model, [(4, [5, 6, 7, 8] + [0] * 16)], k=3)
    assert result.drafts > 0 and result.rates == [1.0, 1.0, 1.0]

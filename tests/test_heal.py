"""heal: the head alone is retrained on the trunk it serves, the way vLLM chains it; the trunk comes out
byte-identical, the output doctor-clean and BF16, the run resumable; on the bundled tiny model (a finetune whose
head was grafted from its base, the tmax-27b case of seed 000) the held-out acceptance rises."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import torch

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor
from mtpforge.errors import UsageError
from mtpforge.heal import heal
from mtpforge.heal.data import Captured, Sequence, greedy_tokens, split_prompts
from mtpforge.heal.evaluate import mean_length_interval
from mtpforge.heal.loss import distill_loss
from mtpforge.heal.train import Frozen, chain_loss
from mtpforge.reference.model import load_reference
from mtpforge.surgery.graft import graft

from .conftest import CliResult

MODELS = Path(str(resources.files("mtpforge") / "models"))
BASE, FINETUNE = MODELS / "tiny-qwen3.5", MODELS / "tiny-qwen3.5-finetune"
FAST = {"steps": 2, "eval_every": 1, "prompt_tokens": 24, "new_tokens": 12, "batch": 2}


@pytest.fixture(scope="module")
def grafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finetune with its base's head grafted: what seed 000 ships, and what heal is for."""
    out = tmp_path_factory.mktemp("heal") / "finetune-mtp"
    graft(str(FINETUNE), str(BASE), str(out))
    return out


def tensor_bytes(path: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Every stored tensor's dtype, shape and sha256 of its bytes."""
    ckpt = open_checkpoint(path)
    out = {}
    for name, t in ckpt.tensors.items():
        with open(path / t.shard, "rb") as f:
            f.seek(t.begin)
            out[name] = (t.dtype, tuple(t.shape), hashlib.sha256(f.read(t.nbytes)).hexdigest())
    return out


# --- the chained training forward is the engine's draft loop ------------------------------------------------------


def engine_chain_hits(model, seq: Sequence, k: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Per step, how many chain starts t draft correctly up to that step, one chain at a time as vLLM runs them
    (the loop of `verify.acceptance`: step-1 KV entries of positions 0..t, then the chain's own)."""
    from transformers.cache_utils import DynamicCache

    head, n = model.head, len(seq.ids)
    ids = seq.ids[None]
    hidden = seq.hidden[None].float()
    cache = head.new_cache()
    step1 = head(model.embed(ids[:, 1:]), hidden[:, : n - 1], torch.arange(n - 1)[None], cache=cache)
    keys, values = cache.layers[0].keys, cache.layers[0].values
    hits = [0] * k
    for t in range(n - 1):
        chain = step1[:, t : t + 1]
        draft = int(model.logits(chain)[0, -1].argmax())
        if t + 1 >= n or draft != int(seq.greedy[t + 1]):
            continue
        hits[0] += 1
        chained = DynamicCache(config=head.config)
        chained.update(keys[:, :, : t + 1].clone(), values[:, :, : t + 1].clone(), 0)
        for step in range(1, k):
            if t + step + 1 >= n:
                break
            chain = head(model.embed(torch.tensor([[draft]])), chain, torch.tensor([[t + step]]), step=step, cache=chained)
            draft = int(model.logits(chain)[0, -1].argmax())
            if draft != int(seq.greedy[t + step + 1]):
                break
            hits[step] += 1
    return hits


@torch.no_grad()
def test_chained_training_forward_drafts_what_the_engine_loop_drafts(grafted: Path) -> None:
    model = load_reference(grafted)
    ids = torch.arange(5, 45)  # any 40 tokens: the trunk decides the targets
    hidden = model.trunk.model(input_ids=ids[None]).last_hidden_state[0]
    seq = Sequence(ids, hidden, greedy_tokens(hidden, model.trunk.lm_head.weight), 1)
    frozen = Frozen(model.trunk.model.embed_tokens.weight, model.trunk.lm_head.weight)
    batched = chain_loss(model.head, frozen, seq, 3, "ce")
    assert batched.hits == engine_chain_hits(model, seq, 3)
    assert batched.hits[0] > 0 and batched.chains == 39


def test_held_out_acceptance_is_verifys_engine_loop_measurement(grafted: Path) -> None:
    from mtpforge.heal.data import capture
    from mtpforge.heal.evaluate import held_out_acceptance
    from mtpforge.verify.acceptance import measure_acceptance

    model = load_reference(grafted)
    captured = capture(model, grafted, prompts=None, prompt_tokens=24, new_tokens=16, held_out_every=8, progress=print)
    assert model.head is not None and len(captured.held_out) >= 3
    ours = held_out_acceptance(model, model.head, captured.held_out, 3)
    loop = measure_acceptance(model, [(s.prompt_len, s.ids.tolist()) for s in captured.held_out], 3).to_dict()
    assert {k: ours[k] for k in loop} == loop and ours["drafts"] > 20


# --- the chunked loss is the full-vocabulary loss -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_chunked_loss_and_gradient_equal_the_full_vocabulary_ones(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 16, generator=g, dtype=torch.float64)
    lm_head = torch.randn(50, 16, generator=g, dtype=torch.float64)
    target = (teacher @ lm_head.T).argmax(-1)
    weights = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.float64)
    loss, drafts, hits = distill_loss(hidden, lm_head, target, teacher=teacher if kind == "kl" else None, weights=weights,
                                      rows=3)
    loss.backward()
    chunked_grad = hidden.grad.clone()
    hidden.grad = None
    logp = torch.log_softmax(hidden @ lm_head.T, -1)
    if kind == "ce":
        rows = -logp.gather(-1, target[:, None])[:, 0]
    else:
        logq = torch.log_softmax(teacher @ lm_head.T, -1)
        rows = (logq.exp() * (logq - logp)).sum(-1)
    full = (rows * weights).sum() / weights.sum()
    full.backward()
    assert torch.allclose(loss.double(), full, atol=1e-6)
    assert torch.allclose(chunked_grad, hidden.grad, atol=1e-6)
    assert torch.equal(drafts, logp.argmax(-1)) and torch.equal(hits, drafts == target)


def test_mean_length_interval_and_prompt_split() -> None:
    low, high = mean_length_interval([50, 30, 20])  # accepted 0, 1, 2 drafts: mean length 1.7
    assert low < 1.7 < high and high - low < 0.35
    assert split_prompts([str(i) for i in range(8)], 4) == ([1, 2, 3, 5, 6, 7], [0, 4])
    with pytest.raises(UsageError, match="cannot be split"):
        split_prompts(["only one"], 4)


# --- the verb ------------------------------------------------------------------------------------------------------


def test_heal_writes_a_trunk_identical_bf16_doctor_clean_checkpoint(grafted: Path, tmp_path: Path,
                                                                    cli: Callable[..., CliResult]) -> None:
    before = tensor_bytes(grafted)
    out = tmp_path / "healed"
    result = cli("heal", str(grafted), "--out", str(out), "--steps", "2", "--eval-every", "1", "--batch", "2", "--json")
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["schema"] == "mtpforge.heal/1" and doc["doctor"]["ok"]
    assert "heal: step 1/2" in result.err and "ETA" in result.err
    after = tensor_bytes(out)
    assert doctor(out).ok
    # every trunk, embedding and vision tensor is byte-identical, and their shard is the input's file, linked
    assert {n: v for n, v in after.items() if not n.startswith("mtp.")} == {n: v for n, v in before.items()
                                                                              if not n.startswith("mtp.")}
    assert (out / "model.safetensors").read_bytes() == (grafted / "model.safetensors").read_bytes()
    # the head: same names, shapes and dtype (BF16, the source precision), its own shard
    heads = {n: v[:2] for n, v in after.items() if n.startswith("mtp.")}
    assert heads == {n: v[:2] for n, v in before.items() if n.startswith("mtp.")}
    assert {d for d, _ in heads.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text()) == json.loads((grafted / "config.json").read_text())
    # Qwen3.5 norms stay in the stored `1 + w` convention: two small steps move them a little, a +1 shift would show
    healed, source = open_checkpoint(out), open_checkpoint(grafted)
    for norm in ("mtp.norm.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.pre_fc_norm_embedding.weight"):
        shift = float(healed.read(healed.tensors[norm]).mean()) - float(source.read(source.tensors[norm]).mean())
        assert abs(shift) < 0.05, (norm, shift)
    report = json.loads((out / "mtpforge-heal.json").read_text())
    for key in ("before", "after"):
        acc = report[key]
        assert len(acc["interval95_per_position"]) == 3 and acc["drafts"] > 0
        lo, hi = acc["mean_acceptance_length_interval95"]
        assert lo <= acc["mean_acceptance_length"] <= hi
    assert [h["step"] for h in report["history"]] == [0, 1, 2]
    assert not (tmp_path / "healed.heal").exists()  # the work directory goes once OUT is published


def test_heal_resumes_where_an_interrupted_run_stopped(tmp_path: Path) -> None:
    """The base keeps its head in model.safetensors beside the trunk: that shard is rewritten, its trunk tensors
    copied byte for byte, the head moved to mtp.safetensors."""
    out, work = tmp_path / "healed", tmp_path / "work"
    seen: list[str] = []

    def interrupt(line: str) -> None:
        seen.append(line)
        if line.startswith("heal: step 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heal(str(BASE), str(out), work=str(work), progress=interrupt, **FAST)
    assert not out.exists() and (work / "state.pt").is_file() and (work / "captured.pt").is_file()
    seen.clear()
    report = heal(str(BASE), str(out), work=str(work), progress=seen.append, **FAST)
    assert any(line.startswith("capture: reused") for line in seen)
    assert "train: resuming at step 1" in "\n".join(seen)
    assert report.steps == 2 and [h["step"] for h in report.history] == [0, 1, 2]
    before, after = tensor_bytes(BASE), tensor_bytes(out)
    assert {n: v for n, v in after.items() if not n.startswith("mtp.")} == {n: v for n, v in before.items()
                                                                              if not n.startswith("mtp.")}
    assert open_checkpoint(out).tensors["mtp.fc.weight"].shard == "mtp.safetensors"
    assert doctor(out).ok and not work.exists()


def test_heal_on_a_quantized_trunk_writes_the_quantized_head_back_unquantized_and_excluded(tmp_path: Path) -> None:
    from mtpforge.quant import quantize

    quantized, out = tmp_path / "w4a16", tmp_path / "healed"
    quantize(str(BASE), str(quantized), scheme="w4a16", group_size=32, mtp="quantize")
    assert any(n.startswith("mtp.") and n.endswith("weight_packed") for n in open_checkpoint(quantized).tensors)
    heal(str(quantized), str(out), **FAST)
    before, after = tensor_bytes(quantized), tensor_bytes(out)
    assert {n: v for n, v in after.items() if not n.startswith("mtp.")} == {n: v for n, v in before.items()
                                                                              if not n.startswith("mtp.")}
    head = {n: v for n, v in after.items() if n.startswith("mtp.")}
    assert {v[0] for v in head.values()} == {"BF16"} and not any("weight_packed" in n for n in head)
    assert "re:^mtp.*" in json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert doctor(out).ok


def test_heal_refuses_a_headless_checkpoint_and_an_output_inside_the_input(tmp_path: Path,
                                                                            cli: Callable[..., CliResult]) -> None:
    result = cli("heal", str(FINETUNE), "--out", str(tmp_path / "out"))
    assert result.code == 2 and "no MTP head" in result.err and "mtpforge graft" in result.err
    result = cli("heal", str(BASE), "--out", str(BASE / "healed"))
    assert result.code == 2 and "overlaps the input" in result.err
    assert not (tmp_path / "out").exists()


def test_captured_data_round_trips(tmp_path: Path) -> None:
    seq = Sequence(torch.arange(6), torch.randn(6, 4), torch.arange(1, 7), 2)
    Captured([seq], [seq]).save(tmp_path / "c.pt")
    back = Captured.load(tmp_path / "c.pt")
    assert torch.equal(back.train[0].hidden, seq.hidden) and back.held_out[0].prompt_len == 2


@pytest.mark.slow
def test_heal_raises_the_grafted_finetunes_held_out_acceptance_beyond_the_intervals(grafted: Path, tmp_path: Path) -> None:
    """The Done-when of issue 16, on the bundled model: minutes on 2 CPU cores."""
    report = heal(str(grafted), str(tmp_path / "healed"))  # the defaults: 100 steps, evaluated every 10
    assert report.kept == "healed" and report.improved, report.render()
    assert report.after and report.before
    assert report.after["mean_acceptance_length"] > report.before["mean_acceptance_length_interval95"][1]


@pytest.mark.slow
def test_build_runs_the_heal_step_between_graft_and_quantize(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    recipe = tmp_path / "healed.toml"
    recipe.write_text('[heal]\nsteps = 2\neval_every = 1\n\n[quantize]\nscheme = "w4a16"\ngroup_size = 32\n\n'
                      '[verify]\nk = 3\nmin_acceptance = 0.3\n')
    out = tmp_path / "out"
    r = cli("build", str(recipe), "--base", str(FINETUNE), "--donor", str(BASE), "--out", str(out), "--json")
    assert r.code == 0, r.err
    steps = r.json()["steps"]
    assert [s["step"] for s in steps][:3] == ["graft", "heal", "quantize"]
    heal_step = steps[1]
    assert len(heal_step["held_out_mean_acceptance_length"]) == 2 and heal_step["kept"] in ("healed", "original")
    assert json.loads((out / "mtpforge-heal.json").read_text())["steps"] == 2  # the heal report travels with the build
    assert doctor(out).ok


def test_a_recipe_with_an_unknown_heal_key_is_refused(tmp_path: Path) -> None:
    from mtpforge.publish.recipe import load_recipe

    bad = tmp_path / "bad.toml"
    bad.write_text("[heal]\nsteps = 2\nepochs = 3\n")
    with pytest.raises(UsageError, match=r"unknown \[heal\] keys \['epochs'\]"):
        load_recipe(bad)
    assert load_recipe("seed-000-heal-w4a16-g32-asym-mtp").heal_options() == {"on": "bf16", "steps": 100, "k": 3, "loss": "kl"}

"""Oracles for the reference runtime: the MTP forward against an independent
step-by-step computation, 100% acceptance by construction, KL(x||x) = 0, and
dequantization bit for bit as compressed-tensors decompresses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mtpforge.checkpoint import open_checkpoint  # noqa: E402
from mtpforge.checkpoint.tensors import read_tensor, read_weight  # noqa: E402
from mtpforge.formats.packing import unpack_fp4  # noqa: E402
from mtpforge.reference.model import load_reference  # noqa: E402
from mtpforge.verify.acceptance import greedy_continuation, measure_acceptance  # noqa: E402
from mtpforge.verify.divergence import measure_divergence  # noqa: E402

Make = Callable[..., Path]
warnings.filterwarnings("ignore")


def rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)


def rope(x: torch.Tensor, positions: torch.Tensor, rot: int, theta: float) -> torch.Tensor:
    """Plain RoPE on the first `rot` dims (text positions are equal on mrope's three axes)."""
    inv = 1.0 / theta ** (torch.arange(0, rot, 2).float() / rot)
    ang = positions[:, None].float() * inv[None]  # [T, rot/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    r, rest = x[..., :rot], x[..., rot:]
    half = torch.cat([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
    return torch.cat([r * cos + half * sin, rest], -1)


def independent_mtp(W: dict[str, torch.Tensor], cfg: dict, embed: torch.Tensor, hidden: torch.Tensor,
                    next_ids: torch.Tensor) -> torch.Tensor:
    """vLLM's qwen3_5_mtp forward written out op by op, from raw weights."""
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    T = len(next_ids)
    x = torch.cat([rms(embed[next_ids], W["pre_fc_norm_embedding.weight"]), rms(hidden, W["pre_fc_norm_hidden.weight"])], -1)
    x = x @ W["fc.weight"].T
    p = "layers.0."
    res, x = x, rms(x, W[p + "input_layernorm.weight"])
    qg = (x @ W[p + "self_attn.q_proj.weight"].T).view(T, heads, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:]
    q = rms(q, W[p + "self_attn.q_norm.weight"])
    k = rms((x @ W[p + "self_attn.k_proj.weight"].T).view(T, kv, hd), W[p + "self_attn.k_norm.weight"])
    v = (x @ W[p + "self_attn.v_proj.weight"].T).view(T, kv, hd)
    pos = torch.arange(T)
    rot = int(hd * 0.25)
    q, k = rope(q, pos, rot, 10000.0), rope(k, pos, rot, 10000.0)
    k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    attn = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, heads * hd)
    x = res + (attn * torch.sigmoid(gate.reshape(T, heads * hd))) @ W[p + "self_attn.o_proj.weight"].T
    res, y = x, rms(x, W[p + "post_attention_layernorm.weight"])
    y = (torch.nn.functional.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)) \
        @ W[p + "mlp.down_proj.weight"].T
    return rms(res + y, W["norm.weight"])


def test_mtp_forward_matches_an_independent_computation(make: Make) -> None:
    ckpt = make("m", engine=True, vision=False)
    ref = load_reference(ckpt)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
    hidden, _ = ref.trunk_forward(ids)
    ours = ref.head(ref.embed(ids[:, 1:]), hidden[:, :-1], torch.arange(ids.shape[1] - 1)[None])[0]
    opened = open_checkpoint(ckpt)
    weights = {n[len("mtp."):]: read_tensor(opened, info).float() for n, info in opened.tensors.items() if n.startswith("mtp.")}
    cfg = ref.trunk.config.to_dict()
    theirs = independent_mtp(weights, cfg, ref.trunk.model.embed_tokens.weight, hidden[0, :-1], ids[0, 1:])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_head_that_reproduces_the_trunk_accepts_everything(make: Make) -> None:
    # constant: trunk and head final norms are -1, so every logit is 0 and both choose token 0
    ref = load_reference(make("c", engine=True, constant=True, vision=False))
    seqs = [(4, greedy_continuation(ref, [5, 6, 7, 8], 20)), (2, greedy_continuation(ref, [9, 1], 20))]
    result = measure_acceptance(ref, seqs, k=3)
    assert result.drafts > 0 and result.rates == [1.0, 1.0, 1.0] and result.mean_acceptance_length == 4.0
    assert result.histogram[-1] == result.drafts


def test_kl_of_a_checkpoint_against_itself_is_zero(make: Make) -> None:
    ref = load_reference(make("k", engine=True, vision=False))
    d = measure_divergence(ref, ref, [[1, 2, 3, 4, 5, 6], [7, 8, 9]])
    assert d.kl_mean_nats == 0.0 and d.kl_max_nats == 0.0 and d.top1_agreement == 1.0
    assert d.perplexity_candidate == d.perplexity_reference


@pytest.mark.parametrize("quant", ["w4a16", "w4a16-asym", "w8a16", "nvfp4"])
def test_dequantization_matches_compressed_tensors_bit_for_bit(make: Make, quant: str) -> None:
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    ckpt = open_checkpoint(make("q", quant=quant))
    group = ckpt.config["quantization_config"]["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**group["weights"]))
    compressor = NVFP4PackedCompressor if quant == "nvfp4" else PackedQuantizationCompressor
    checked = 0
    for name, weight in ckpt.stored.items():
        if not weight.quantized:
            continue
        parts = {k: read_tensor(ckpt, v) for k, v in weight.parts.items()}
        theirs = compressor.decompress(parts, scheme)["weight"]
        ours = read_weight(ckpt, weight)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
        checked += 1
    assert checked >= 20


def test_modelopt_nvfp4_dequantizes_like_its_compressed_tensors_conversion(make: Make) -> None:
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    ckpt = open_checkpoint(make("mo", quant="modelopt-nvfp4"))
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="float", strategy="tensor_group",
                                                                            group_size=16, symmetric=True))
    for weight in (w for w in ckpt.stored.values() if w.quantized):
        p = {k: read_tensor(ckpt, v) for k, v in weight.parts.items()}
        # compressed-tensors' modelopt converter: weight -> weight_packed, weight_global_scale = 1 / weight_scale_2
        converted = {"weight_packed": p["weight"], "weight_scale": p["weight_scale"],
                     "weight_global_scale": (1 / p["weight_scale_2"]).reshape(1)}
        theirs = NVFP4PackedCompressor.decompress(converted, scheme)["weight"]
        torch.testing.assert_close(read_weight(ckpt, weight), theirs, rtol=2**-7, atol=0)


def test_e2m1_unpacking_keeps_the_sign_of_zero() -> None:
    # every nibble, low first: 0x80 is (+0, -0); 0xF7 is (+6, -6)
    packed = torch.tensor([[0x80, 0xF7, 0x3A]], dtype=torch.uint8)
    values = unpack_fp4(packed).float()
    assert values.tolist() == [[0.0, -0.0, 6.0, -6.0, -1.0, 1.5]]
    assert torch.signbit(values).tolist() == [[False, True, False, True, True, False]]  # torch.equal would not see -0.0


@pytest.mark.parametrize("family,fused", [("qwen3_5_moe", True), ("qwen3_5_moe", False),
                                          ("qwen3_next", True), ("qwen3_next", False)])
def test_moe_and_next_families_run_in_the_reference_runtime(make: Make, family: str, fused: bool) -> None:
    ref = load_reference(make("m", family=family, fused_experts=fused))
    _hidden, logits = ref.trunk_forward(torch.tensor([[1, 2, 3, 4, 5]]))
    assert torch.isfinite(logits).all() and ref.head is not None
    const = load_reference(make("c", family=family, fused_experts=fused, constant=True))
    seqs = [(3, greedy_continuation(const, [5, 6, 7], 16))]
    assert measure_acceptance(const, seqs, k=2).rates == [1.0, 1.0]  # the same oracle as for the dense family
    assert measure_divergence(ref, ref, [[1, 2, 3, 4]]).kl_mean_nats == 0.0


def test_per_expert_weights_fuse_as_transformers_stores_them(make: Make) -> None:
    from mtpforge.reference.model import fuse_experts

    g, u, d = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4, 3)
    state = {f"x.mlp.experts.{e}.{p}.weight": t * (e + 1)
             for e in range(2) for p, t in (("gate_proj", g), ("up_proj", u), ("down_proj", d))}
    fused = fuse_experts(state)
    assert fused["x.mlp.experts.gate_up_proj"].shape == (2, 6, 4) and fused["x.mlp.experts.down_proj"].shape == (2, 4, 3)
    assert torch.equal(fused["x.mlp.experts.gate_up_proj"][1], torch.cat([g, u]) * 2)

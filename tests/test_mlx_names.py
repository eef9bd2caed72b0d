"""doctor and inspect on checkpoints `mlx_lm.convert` wrote: mlx-lm's own tensor names, stacked experts,
its 8-bit routers, and the MTP head it drops.

The fixtures are hollow conversions of a tiny Qwen3.5-MoE / Qwen3.5 dense checkpoint (the factory's, in the
public `Qwen3_5MoeForConditionalGeneration` layout with its vision_config), converted here by a transcription
of mlx-lm's rules, independent of mtpforge's (families/mlx_names.py):

- ml-explore/mlx-lm `mlx_lm/models/qwen3_5.py` `Model.sanitize` (skip `model.visual`; `model.language_model`
  -> `language_model.model`; every other key prefixed `language_model.`), `TextModel.sanitize` (drop every
  key containing `mtp.`; conv1d `moveaxis(2, 1)`), and `quant_predicate` (`mlp.gate` / `shared_expert_gate`:
  `{"group_size": 64, "bits": 8}`, MoE models only);
- `mlx_lm/models/qwen3_5_moe.py` `_normalize_experts` (per-expert tensors stacked into
  `mlp.switch_mlp.{gate,up,down}_proj.weight` [E, out, in]);
- `mlx_lm/models/qwen3_next.py` `Model.sanitize` (no renaming; `mtp.` dropped; experts stacked into
  `switch_mlp`) and the same router `quant_predicate`;
- `mlx_lm/models/deepseek_v3.py` at 04e6af1f `Model.sanitize` (per-expert tensors stacked into `switch_mlp`,
  `self_attn.kv_b_proj` [H*(nope+v), kv_lora] split into `embed_q` [H, kv_lora, nope] and `unembed_out`
  [H, v, kv_lora], the MTP layer `model.layers.61` dropped: at the replica's cut depth, `model.layers.4`);
  its `MoEGate` holds a bare weight (no `nn.Linear`), so the router is never quantized; GLM-5:
  `mlx_lm/models/glm_moe_dsa.py` at 0352b8dd `Model.sanitize` (the same stacking and split; every layer from
  `num_hidden_layers` on dropped);
- `mlx_lm/utils.py` `quantize_model` (`nn.quantize` of every Linear / Embedding whose input width divides by
  the group; per-module dicts recorded under `quantization[path]`; `quantization_config` = `quantization`,
  with `"mode": "affine"`), in MLX's packed layout: U32 weight [out, in*bits/32], scales and biases
  [out, in/group] (mlx.core.quantize).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.header import read_header
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.writer import TensorData
from mtpforge.diagnosis.doctor import doctor
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.testing.factory import make_checkpoint, write_shards
from mtpforge.testing.replica import make_family_replica

from .conftest import codes, read_all

GROUP, BITS = 32, 4  # mlx-lm's default group is 64; the tiny model's 64-wide layers need 32 to hold 2 groups
ROUTER = {"group_size": 32, "bits": 8}  # mlx-lm's router override, at the tiny model's group


def _sanitize(name: str, wrapper: bool, keep_mtp: bool = False) -> str | None:
    """mlx-lm's key for a Hugging Face key (None: dropped); Qwen3-Next's `Model` has no `language_model` wrapper."""
    if name.startswith(("vision_tower", "model.visual")):
        return None
    if not wrapper:
        return None if "mtp." in name and not keep_mtp else name
    name = name.replace("model.language_model", "language_model.model", 1) if name.startswith("model.language_model") \
        else "language_model." + name
    return None if "mtp." in name and not keep_mtp else name


def mlx_convert(src: Path, out: Path, *, quantize: bool = True, moe: bool = True, router_bits: int | None = 8,
                drop: str = "", wrapper: bool = True, keep_mtp: bool = False) -> Path:
    """A hollow `mlx_lm.convert` of `src` (its config kept, `quantization` added), written to `out`, less the
    tensors of module `drop`."""
    tensors: dict[str, TensorData] = {}
    for shard in sorted(src.glob("*.safetensors")):
        for t in read_all(shard):
            name = _sanitize(t.name, wrapper, keep_mtp)
            if name is not None:
                tensors[name] = TensorData(name, t.dtype, t.shape, t.data)
    stacked: dict[str, list[TensorData]] = {}
    for name in sorted(tensors):
        parts = name.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            i = parts.index("experts")
            key = ".".join([*parts[:i], "switch_mlp", *parts[i + 2:]])
            stacked.setdefault(key, []).append(tensors.pop(name))
    for key, per in stacked.items():
        per.sort(key=lambda t: int(t.name.split(".experts.")[1].split(".")[0]))
        tensors[key] = TensorData(key, per[0].dtype, (len(per), *per[0].shape), b"".join(t.data for t in per))
    for name, t in list(tensors.items()):
        if "conv1d.weight" in name:
            c, one, k = t.shape
            tensors[name] = TensorData(name, t.dtype, (c, k, one), t.data)
    config = json.loads((src / "config.json").read_text())
    config.pop("language_model_only", None)  # the public wrapper config, vision_config kept
    quant: dict[str, Any] = {"group_size": GROUP, "bits": BITS, "mode": "affine"}
    written: list[TensorData] = []
    for name, t in sorted(tensors.items()):
        module = name.rsplit(".", 1)[0]
        if drop and module == drop:
            continue
        linear = name.endswith(".weight") and len(t.shape) >= 2 and "conv1d" not in name
        if not (quantize and linear and t.shape[-1] % GROUP == 0):
            written.append(t)
            continue
        bits = BITS
        if moe and router_bits and module.endswith((".mlp.gate", ".shared_expert_gate")):
            quant[module] = {**ROUTER, "bits": router_bits}
            bits = router_bits
        *lead, inp = t.shape
        written += [TensorData(name, "U32", (*lead, inp * bits // 32)),
                    TensorData(f"{module}.scales", t.dtype, (*lead, inp // GROUP)),
                    TensorData(f"{module}.biases", t.dtype, (*lead, inp // GROUP))]
    if quantize:
        config["quantization"] = quant
        config["quantization_config"] = quant
    out.mkdir()
    write_shards(out, written, shards=2, index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.name not in ("config.json", INDEX_NAME) and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def moe_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hf") / "moe", "qwen3_5_moe", vision=False, fused_experts=False)


def test_healthy_mlx_export_without_its_dropped_head_is_read_by_mlx_names(moe_src: Path, tmp_path: Path) -> None:
    ckpt = mlx_convert(moe_src, tmp_path / "mlx")
    r = doctor(ckpt).to_dict()
    # the one real finding: mlx-lm's sanitize dropped the head the config still declares
    assert codes(r) == {"mtp-missing"}, r["findings"]
    stored = open_checkpoint(ckpt).stored
    router = stored["language_model.model.layers.0.mlp.gate.weight"]
    assert (router.format, router.bits, router.shape) == ("mlx-affine", 8, (4, 64))  # its own 8 bits, not the global 4
    experts = stored["language_model.model.layers.0.mlp.switch_mlp.down_proj.weight"]
    assert (experts.format, experts.bits, experts.shape[0]) == ("mlx-affine", 4, 4)  # 4 experts stacked


def test_inspect_reads_mlx_names(moe_src: Path, tmp_path: Path) -> None:
    ckpt = mlx_convert(moe_src, tmp_path / "mlx")
    r = inspect_checkpoint(ckpt).to_dict()
    assert r["mtp"]["present"] is False and r["mtp"]["expected_tensors"] > 0  # the head mlx-lm dropped
    assert r["vision"]["declared"] is False  # mlx-lm drops the tower; config.json keeps vision_config
    [config] = r["quantization"]["configs"]
    assert config["method"] == "mlx" and config["ignore"] == []  # the 8-bit routers are overrides, not exclusions
    linear = r["quantization"]["linear_quantized"]["trunk"]
    assert linear["quantized"] == linear["total"] > 0  # routers and stacked experts included
    stored = len(open_checkpoint(ckpt).stored)
    assert r["groups"]["trunk"]["tensors"] + r["groups"]["embeddings"]["tensors"] == stored


def test_an_mlx_export_that_kept_a_router_unquantized_is_healthy(moe_src: Path, tmp_path: Path) -> None:
    ckpt = mlx_convert(moe_src, tmp_path / "mlx-bf16-router", router_bits=None)  # a predicate returning False
    assert codes(doctor(ckpt).to_dict()) == {"mtp-missing"}


def test_a_router_stored_at_other_bits_than_config_says_is_named(moe_src: Path, tmp_path: Path) -> None:
    ckpt = mlx_convert(moe_src, tmp_path / "mlx", router_bits=4)  # packed at 4 bits ...
    config = json.loads((ckpt / "config.json").read_text())
    router = "language_model.model.layers.0.mlp.gate"
    for key in ("quantization", "quantization_config"):
        config[key][router] = ROUTER  # ... declared 8: mlx-lm's load_weights would refuse the shape
    (ckpt / "config.json").write_text(json.dumps(config))
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-missing", "tensor-shape-mismatch"}
    [f] = [f for f in r["findings"] if f["code"] == "tensor-shape-mismatch"]
    assert f["tensors"] == [f"{router}.weight"] and "expected [4, 64]" in f["message"]


def test_a_missing_stacked_expert_tensor_is_named(moe_src: Path, tmp_path: Path) -> None:
    gone = "language_model.model.layers.1.mlp.switch_mlp.up_proj"
    ckpt = mlx_convert(moe_src, tmp_path / "mlx", drop=gone)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-missing", "tensor-missing"}
    [f] = [f for f in r["findings"] if f["code"] == "tensor-missing"]
    assert f["tensors"] == [f"{gone}.weight"]


def test_bf16_mlx_export_of_a_dense_model(tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "hf", "qwen3_5", vision=False)
    ckpt = mlx_convert(src, tmp_path / "mlx", quantize=False, moe=False)
    r = doctor(ckpt).to_dict()
    # a BF16 export carries no mark of mlx-lm in config.json: the dropped vision tower is reported as well
    assert {"mtp-missing", "vision-missing-undeclared"} == codes(r), r["findings"]


def test_qwen3_next_mlx_export_keeps_model_names(tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path / "hf", "qwen3_next", fused_experts=False)
    ckpt = mlx_convert(src, tmp_path / "mlx", wrapper=False)
    assert codes(doctor(ckpt).to_dict()) == {"mtp-missing"}
    router = open_checkpoint(ckpt).stored["model.layers.0.mlp.shared_expert_gate.weight"]
    assert (router.format, router.bits, router.shape) == ("mlx-affine", 8, (1, 64))


def test_an_mlx_export_that_kept_the_head_is_read_under_language_model_mtp(moe_src: Path, tmp_path: Path) -> None:
    # mlx-lm's qwen3_5_moe.py at 48aab6cd (`_normalize_experts` over `language_model.mtp.layers.{i}.mlp`) maps
    # `mtp.*` to `language_model.mtp.*` and stacks the head's experts as the trunk's
    ckpt = mlx_convert(moe_src, tmp_path / "mlx-head", keep_mtp=True)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quantized"}, r["findings"]  # a quantized head is the one caution, every name is read
    [f] = r["findings"]
    assert f["tensors"] and all(n.startswith("language_model.mtp.") for n in f["tensors"])
    assert "language_model.mtp.layers.0.mlp.switch_mlp.down_proj.weight" in open_checkpoint(ckpt).stored


PUBLIC = Path("/work/shared/reference/public-configs")


def mlx_convert_deepseek(src: Path, out: Path) -> Path:
    """A hollow `mlx_lm.convert` of a DeepSeek-V3 / R1 replica (headers only: zeros throughout)."""
    config = json.loads((src / "config.json").read_text())
    heads, nope, v_dim, lora = (config[k] for k in ("num_attention_heads", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank"))
    mtp = f"model.layers.{config['num_hidden_layers']}."
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for shard in sorted(src.glob("*.safetensors")):
        for t in read_header(shard).tensors.values():
            if not t.name.startswith(mtp):
                tensors[t.name] = (t.dtype, tuple(t.shape))
    stacked: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name in sorted(tensors):
        if ".mlp.experts." in name:
            head, _, rest = name.partition(".mlp.experts.")
            stacked.setdefault(f"{head}.mlp.switch_mlp.{rest.split('.', 1)[1]}", []).append(tensors.pop(name))
    tensors |= {k: (per[0][0], (len(per), *per[0][1])) for k, per in stacked.items()}
    for name in [n for n in tensors if n.endswith(".kv_b_proj.weight")]:
        dtype, _ = tensors.pop(name)
        attn = name.rsplit(".", 2)[0]
        tensors[f"{attn}.embed_q.weight"] = (dtype, (heads, lora, nope))
        tensors[f"{attn}.unembed_out.weight"] = (dtype, (heads, v_dim, lora))
    quant: dict[str, Any] = {"group_size": GROUP, "bits": BITS, "mode": "affine"}
    written: list[TensorData] = []
    for name, (dtype, shape) in sorted(tensors.items()):
        module = name.rsplit(".", 1)[0]
        router = module.endswith(".mlp.gate")  # MoEGate: no to_quantized
        if not name.endswith(".weight") or len(shape) < 2 or router or shape[-1] % GROUP:
            written.append(TensorData(name, dtype, shape))
            continue
        *lead, inp = shape
        written += [TensorData(name, "U32", (*lead, inp * BITS // 32)),
                    TensorData(f"{module}.scales", "BF16", (*lead, inp // GROUP)),
                    TensorData(f"{module}.biases", "BF16", (*lead, inp // GROUP))]
    config |= {"quantization": quant, "quantization_config": quant}
    out.mkdir()
    write_shards(out, written, shards=3, index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.name not in ("config.json", INDEX_NAME) and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("name", ["deepseek-ai--DeepSeek-R1", "zai-org--GLM-5"])
def test_mla_mlx_export_reads_split_kv_b_and_finds_the_dropped_head(tmp_path: Path, name: str) -> None:
    config = json.loads((PUBLIC / name / "config.json").read_text())
    ckpt = mlx_convert_deepseek(make_family_replica(tmp_path / "hf", config), tmp_path / "mlx")
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-missing"}, r["findings"]
    stored = open_checkpoint(ckpt).stored
    heads, nope, lora = config["num_attention_heads"], config["qk_nope_head_dim"], config["kv_lora_rank"]
    assert stored["model.layers.3.self_attn.embed_q.weight"].shape == (heads, lora, nope)
    experts = stored["model.layers.3.mlp.switch_mlp.gate_proj.weight"]
    assert experts.shape == (config["n_routed_experts"], config["moe_intermediate_size"], config["hidden_size"])

"""doctor on the storage formats the field publishes: ModelOpt (NVFP4 and MIXED_PRECISION), GPTQ, AWQ,
AutoRound, AMD Quark MXFP4 and MLX affine. For each: a healthy export exits 0, the head-coverage defect
is one finding that names the tensors, the file and the fix, and `--fix` repairs what is metadata only.

Fixtures are hollow: a tiny Qwen3.5-MoE (4 layers, 4 experts per layer, per-expert tensors, one MTP
layer) whose Linear weights are replaced by each format's packed tensors (real names, dtypes and packed
shapes, zero data: `formats.foreign.hollow`), with the quantization config each public export ships.
Group sizes are 32 (16 for NVFP4) so that the tiny 64-wide layers hold whole groups. Sources:

- ModelOpt NVFP4: nvidia/Qwen3.5-397B-A17B-NVFP4 `hf_quant_config.json` (its `exclude_modules`, kept for
  the tiny model's layers 0-3); MIXED_PRECISION: nvidia/Qwen3.6-35B-A3B-NVFP4 `hf_quant_config.json` and
  `config.json` (its `quantized_layers` of a linear-attention and a full-attention layer, and `lm_head`),
  both verbatim in /work/shared/reference/public-configs/.
- GPTQ: the `quantization_config` GPTQModel writes (bits, group_size, desc_act, sym, lm_head,
  checkpoint_format, `dynamic` with `-:` rules: vLLM PR #7086); the defect is vLLM PR #48814/#48816
  (Qwen/Qwen3.5-397B-A17B-GPTQ-Int4: MTP stored BF16, no negative rule: `'RoutedExperts' object has no
  attribute 'w2_weight'`), and the `-:...mtp...` check of vLLM PR #52649.
- AWQ: transformers `AwqConfig` fields (`zero_point`, `version: gemm`, `modules_to_not_convert`); the
  defect is vLLM PR #39475 / #47828 (Qwen3.5 GPTQ/AWQ MTP stored BF16 but built quantized).
- AutoRound: the auto-round `quantization_config` (`packing_format: auto_round:auto_gptq`,
  `block_name_to_quantize`, `extra_config`) as vLLM's `inc/config_parser.py` reads it; the quantized-head
  defect is vLLM PR #49553 (block names leave the MTP layers out).
- Quark MXFP4: the `quant_method: quark` config (`global_quant_config.weight` fp4 / e8m0, `exclude`) of
  vLLM PR #16943; the per-module MTP exclude is the amd Qwen3.5 MXFP4 layout of SGLang PR #38870.
- MLX affine: mlx-lm's `quantization: {group_size, bits}` with per-module overrides, and its
  `class_predicate` (a module is quantized when its `scales` are stored).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.checkpoint.quant_match import wildcard_rules
from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.diagnosis.doctor import doctor
from mtpforge.families import FAMILIES, MTP, TRUNK, TensorSpec
from mtpforge.families.base import LINEAR
from mtpforge.formats import foreign
from mtpforge.formats.schemes import SCHEMES
from mtpforge.testing.factory import make_checkpoint, write_shards

from .conftest import codes, read_all

REFERENCE = Path("/work/shared/reference/public-configs")
NVFP4_397B = REFERENCE / "nvidia--Qwen3.5-397B-A17B-NVFP4"
MIXED_35B = REFERENCE / "nvidia--Qwen3.6-35B-A3B-NVFP4"
FAMILY = "qwen3_5_moe"
NVFP4 = "modelopt-nvfp4"
Stored = Callable[[TensorSpec], str | None]


def head_modules(r: dict[str, Any], code: str) -> list[str]:
    [f] = [f for f in r["findings"] if f["code"] == code]
    return f["tensors"]


def mtp_linears(ckpt: Path) -> list[str]:
    """The head's Linear weights engines quantize (routers excluded: no engine quantizes them)."""
    inv = _inventory(ckpt)
    return sorted(n for n, s in inv.items() if s.group == MTP and s.kind == LINEAR and not s.keep_high_precision)


def build(tmp_path: Path, name: str, stored: Stored, *, config: dict[str, Any] | None = None,
          key: str = "quantization_config", hf_quant: dict[str, Any] | None = None, bits: int = 4, group: int = 32,
          side: str | None = None) -> Path:
    """A hollow Qwen3.5-MoE export: each Linear stored as `stored(spec)` says (None: BF16), with `config`;
    the MTP head in its own indexed `side` file when given (AutoRound's model_extra_tensors.safetensors)."""
    base = make_checkpoint(tmp_path / f"{name}-bf16", FAMILY, vision=False, fused_experts=False)
    inv = _inventory(base)
    tensors: list[TensorData] = []
    for shard in sorted(base.glob("*.safetensors")):
        for t in read_all(shard):
            spec = inv.get(t.name)
            fmt = stored(spec) if spec is not None and spec.kind == LINEAR else None
            tensors += [t] if fmt is None else _packed(fmt, spec, bits, group)  # type: ignore[arg-type]
    out = tmp_path / name
    out.mkdir()
    head = [t for t in tensors if side and t.name.startswith("mtp.")]
    write_shards(out, [t for t in tensors if t not in head], shards=3, index=True)
    if side:
        write_safetensors(out / side, head, {"format": "pt"})
        index = json.loads((out / INDEX_NAME).read_text())
        index["weight_map"] |= {t.name: side for t in head}
        index["metadata"]["total_size"] += sum(t.nbytes for t in head)
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2))
    for f in base.iterdir():
        if not f.name.endswith(".safetensors") and f.name != INDEX_NAME:
            shutil.copy(f, out / f.name)
    doc = json.loads((out / "config.json").read_text())
    if config is not None:
        doc[key] = config
    (out / "config.json").write_text(json.dumps(doc, indent=2))
    if hf_quant is not None:
        (out / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2))
    shutil.rmtree(base)
    return out


def _packed(fmt: str, spec: TensorSpec, bits: int, group: int) -> list[TensorData]:
    out, inp = spec.shape
    if fmt == NVFP4:
        return [TensorData(f"{spec.module}.{k}", d, s) for k, (d, s) in SCHEMES[NVFP4].companions(out, inp, 16).items()]
    return [TensorData(n, d, s) for n, d, s in foreign.hollow(fmt, spec.module, out, inp, bits=bits, group=group)]


def _inventory(ckpt: Path) -> dict[str, TensorSpec]:
    config = json.loads((ckpt / "config.json").read_text())
    return FAMILIES[FAMILY].expected(config, fused_experts=False, vision=False)


def trunk(fmt: str) -> Stored:
    """`fmt` for the trunk's Linear weights, except the routers and GDN's in_proj_a / in_proj_b; the head BF16."""
    return lambda s: fmt if s.group == TRUNK and not (s.keep_high_precision or s.small_proj) else None


def trunk_and_head(fmt: str) -> Stored:
    return lambda s: fmt if s.group in (TRUNK, MTP) and not (s.keep_high_precision or s.small_proj) else None


def fix(cli: Any, ckpt: Path, says: str = "exclude the MTP head") -> Path:
    """`doctor --fix` exits 0, its plan says `says`, and the output passes doctor."""
    out = ckpt.parent / f"{ckpt.name}-fixed"
    r = cli("doctor", str(ckpt), "--fix", "--out", str(out))
    assert r.code == 0 and says in r.out, r.out + r.err
    assert doctor(out).ok and codes(doctor(out).to_dict()) <= {"mtp-quantized"}
    return out


def config_of(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "config.json").read_text())["quantization_config"]


# ---- GPTQ --------------------------------------------------------------------

GPTQ = {"bits": 4, "group_size": 32, "desc_act": False, "sym": True, "lm_head": False, "quant_method": "gptq",
        "checkpoint_format": "gptq", "true_sequential": True,
        "dynamic": {r"-:.*linear_attn\.in_proj_[ab]$": {}, r"-:^mtp\.": {}},
        "meta": {"quantizer": ["gptqmodel:4.2.5"], "damp_percent": 0.05}}


def test_gptq_healthy_export_is_read_packed_and_passes(tmp_path: Path) -> None:
    ckpt = build(tmp_path, "gptq", trunk(foreign.GPTQ), config=GPTQ)
    r = doctor(ckpt).to_dict()
    assert r["ok"] and codes(r) == set(), r["findings"]
    weights = open_checkpoint(ckpt).stored
    q = weights["model.language_model.layers.0.mlp.experts.2.down_proj.weight"]
    assert (q.format, q.shape, q.bits) == ("gptq", (64, 32), 4)  # [out, in] from qweight [in/8, out] and g_idx [in]


def test_gptq_head_stored_bf16_without_a_negative_rule_is_named_and_fixed(tmp_path: Path, cli: Any) -> None:
    config = copy.deepcopy(GPTQ)
    del config["dynamic"][r"-:^mtp\."]  # Qwen3.5-397B-A17B-GPTQ-Int4 (vLLM #48814)
    ckpt = build(tmp_path, "gptq-uncovered", trunk(foreign.GPTQ), config=config)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"}
    [f] = r["findings"]
    assert f["tensors"] == mtp_linears(ckpt) and len(f["tensors"]) == 20 and f["files"] == ["config.json"]
    assert "-:^mtp\\." in f["message"] and ".safetensors" in f["message"]  # the fix, and the shard holding the head
    out = fix(cli, ckpt, says="'-:^mtp\\.' in dynamic")
    assert next(iter(config_of(out)["dynamic"])) == r"-:^mtp\."  # first: the first matching rule decides
    assert config_of(ckpt)["dynamic"] == config["dynamic"]  # the input is never modified


def test_autoround_gptq_export_with_positive_head_rules_and_a_bf16_side_file(tmp_path: Path, cli: Any) -> None:
    """Vishva007/Qwen3.8-27B-W4A16-AutoRound-GPTQ, as a public serving guide describes it: the MTP tensors are BF16
    in model_extra_tensors.safetensors, but `dynamic` declares `+:.*mtp.*` and `+:.*mtp\\.fc.*` (4-bit, group 64)."""
    config = copy.deepcopy(GPTQ)
    config["dynamic"] = {r"-:.*linear_attn\.in_proj_[ab]$": {}, "+:.*mtp.*": {"bits": 4, "group_size": 64},
                         r"+:.*mtp\.fc.*": {"bits": 4, "group_size": 64}}
    ckpt = build(tmp_path, "ar-gptq", trunk(foreign.GPTQ), config=config, side="model_extra_tensors.safetensors")
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"}
    [f] = r["findings"]
    assert f["tensors"] == mtp_linears(ckpt) and "model_extra_tensors.safetensors" in f["message"]
    out = fix(cli, ckpt, says="'-:^mtp\\.' in dynamic")
    assert list(config_of(out)["dynamic"])[:2] == [r"-:^mtp\.", r"-:.*linear_attn\.in_proj_[ab]$"]  # before the + rules


def test_gptq_head_quantized_but_excluded_is_one_mismatch(tmp_path: Path) -> None:
    ckpt = build(tmp_path, "gptq-excluded", trunk_and_head(foreign.GPTQ), config=GPTQ)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"quant-declared-mismatch", "mtp-quantized"} and not r["ok"]
    assert head_modules(r, "quant-declared-mismatch") == mtp_linears(ckpt)  # 12 expert tensors among them: one finding


def test_gptq_dynamic_rules_follow_vllm_order_and_overrides() -> None:
    from mtpforge.checkpoint.quant_config import parse

    qc = parse({**GPTQ, "dynamic": {r"+:.*layers\.1\..*": {"bits": 8, "group_size": 64}, r"-:.*layers\.1\.mlp.*": {},
                                    r"-:^mtp\.": {}}}, "config.json quantization_config")
    layer1 = qc.scheme_for("model.language_model.layers.1.mlp.experts.0.up_proj")
    assert layer1 is not None and (layer1.weight_bits, layer1.group_size) == (8, 64)  # the first matching rule wins
    assert qc.scheme_for("mtp.layers.0.self_attn.qkv_proj") is None  # the fused name vLLM asks about
    assert qc.scheme_for("lm_head") is None  # lm_head: false
    assert qc.scheme_for("model.language_model.layers.0.self_attn.o_proj").weight_bits == 4  # type: ignore[union-attr]


# ---- AWQ ---------------------------------------------------------------------

AWQ = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
       "modules_to_not_convert": ["linear_attn.in_proj_a", "linear_attn.in_proj_b", "mtp"]}


def test_awq_healthy_and_head_not_converted(tmp_path: Path, cli: Any) -> None:
    ckpt = build(tmp_path, "awq", trunk(foreign.AWQ), config=AWQ)
    assert doctor(ckpt).ok and codes(doctor(ckpt).to_dict()) == set()
    w = open_checkpoint(ckpt).stored["model.language_model.layers.3.self_attn.q_proj.weight"]
    assert (w.format, w.shape, w.bits) == ("awq", (128, 64), 4)  # qweight [in, out/8]
    broken = build(tmp_path, "awq-uncovered", trunk(foreign.AWQ),
                   config={**AWQ, "modules_to_not_convert": ["linear_attn.in_proj_a", "linear_attn.in_proj_b"]})
    r = doctor(broken).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"} and head_modules(r, "mtp-quant-uncovered") == mtp_linears(broken)
    assert "modules_to_not_convert" in r["findings"][0]["message"]
    assert "mtp." in config_of(fix(cli, broken))["modules_to_not_convert"]


# ---- AutoRound ---------------------------------------------------------------

AUTOROUND = {"quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": True, "data_type": "int",
             "packing_format": "auto_round:auto_gptq", "autoround_version": "0.9.1",
             "block_name_to_quantize": "model.language_model.layers",
             "extra_config": {r".*linear_attn\.in_proj_[ab]$": {"bits": 16, "data_type": "float"}}}


def test_autoround_block_names_decide_and_a_quantized_head_outside_them_is_a_mismatch(tmp_path: Path) -> None:
    assert doctor(build(tmp_path, "ar", trunk(foreign.GPTQ), config=AUTOROUND)).ok
    ckpt = build(tmp_path, "ar-head", trunk_and_head(foreign.GPTQ), config=AUTOROUND)  # vLLM #49553
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"quant-declared-mismatch", "mtp-quantized"}
    assert head_modules(r, "quant-declared-mismatch") == mtp_linears(ckpt)
    assert "leaves it unquantized" in r["findings"][0]["message"]


def test_autoround_without_block_names_needs_the_head_in_extra_config(tmp_path: Path, cli: Any) -> None:
    config = {k: v for k, v in AUTOROUND.items() if k != "block_name_to_quantize"}
    ckpt = build(tmp_path, "ar-all", trunk(foreign.GPTQ), config=config)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"} and "extra_config" in r["findings"][0]["message"]
    assert config_of(fix(cli, ckpt))["extra_config"][r"^mtp\."] == {"bits": 16}


# ---- Quark MXFP4 -------------------------------------------------------------

QUARK = {"quant_method": "quark", "version": "0.10",
         "global_quant_config": {"weight": {"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "ch_axis": -1,
                                            "scale_format": "e8m0", "is_dynamic": False},
                                 "input_tensors": {"dtype": "fp4", "qscheme": "per_group", "group_size": 32,
                                                   "scale_format": "e8m0", "is_dynamic": True},
                                 "output_tensors": None, "bias": None},
         "layer_quant_config": {}, "layer_type_quant_config": {},
         "exclude": ["lm_head", r"re:.*linear_attn\.in_proj_[ab]$", "re:^mtp.*"],
         "export": {"kv_cache_group": [], "pack_method": "reorder", "weight_format": "real_quantized"}}


def test_quark_mxfp4_healthy_and_uncovered_head(tmp_path: Path, cli: Any) -> None:
    ckpt = build(tmp_path, "quark", trunk(foreign.MXFP4), config=QUARK)
    assert doctor(ckpt).ok and codes(doctor(ckpt).to_dict()) == set()
    w = open_checkpoint(ckpt).stored["model.language_model.layers.0.linear_attn.in_proj_qkv.weight"]
    assert (w.format, w.shape) == ("mxfp4", (128, 64))  # U8 [out, in/2] + E8M0 [out, in/32]
    broken = build(tmp_path, "quark-uncovered", trunk(foreign.MXFP4), config={**QUARK, "exclude": QUARK["exclude"][:2]})
    r = doctor(broken).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"} and "quantization_config.exclude" in r["findings"][0]["message"]
    assert "re:^mtp.*" in config_of(fix(cli, broken))["exclude"]


def test_quark_per_module_head_exclude_misses_the_fused_names(tmp_path: Path, cli: Any) -> None:
    ckpt = build(tmp_path, "quark-per-module", trunk(foreign.MXFP4), config=QUARK)
    names = [n.removesuffix(".weight") for n in mtp_linears(ckpt)]  # SGLang #38870: each MTP module listed
    with open(ckpt / "config.json") as f:
        doc = json.load(f)
    doc["quantization_config"]["exclude"] = QUARK["exclude"][:2] + names
    (ckpt / "config.json").write_text(json.dumps(doc))
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-ignore-fused-unsafe"}  # qkv_proj / gate_up_proj are not listed: SGLang quantizes them
    assert config_of(fix(cli, ckpt))["exclude"] == [*QUARK["exclude"][:2], "re:^mtp.*"]


# ---- MLX affine --------------------------------------------------------------

MLX = {"group_size": 32, "bits": 4}


def test_mlx_affine_is_read_from_config_quantization(tmp_path: Path) -> None:
    ckpt = build(tmp_path, "mlx", trunk(foreign.MLX_AFFINE), config=MLX, key="quantization")
    r = doctor(ckpt).to_dict()
    assert r["ok"] and codes(r) == set(), r["findings"]  # no tensor-missing: weight U32 + scales + biases is one weight
    w = open_checkpoint(ckpt).stored["model.language_model.layers.2.mlp.shared_expert.down_proj.weight"]
    assert (w.format, w.shape, w.bits) == ("mlx-affine", (64, 32), 4)


def test_mlx_override_that_quantizes_a_bf16_head_module(tmp_path: Path) -> None:
    config = {**MLX, "mtp.fc": {"group_size": 32, "bits": 8}}  # mlx-lm builds a QuantizedLinear, finds no scales
    ckpt = build(tmp_path, "mlx-override", trunk(foreign.MLX_AFFINE), config=config, key="quantization")
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"} and head_modules(r, "mtp-quant-uncovered") == ["mtp.fc.weight"]
    off = build(tmp_path, "mlx-off", trunk(foreign.MLX_AFFINE),
                config={**MLX, "model.language_model.layers.0.linear_attn.out_proj": False}, key="quantization")
    r = doctor(off).to_dict()
    assert codes(r) == {"quant-declared-mismatch"}
    assert head_modules(r, "quant-declared-mismatch") == ["model.language_model.layers.0.linear_attn.out_proj.weight"]


# ---- ModelOpt NVFP4: routers ------------------------------------------------------

def _real_397b_excludes() -> list[str]:
    """The real exclude_modules of nvidia/Qwen3.5-397B-A17B-NVFP4, for the tiny model's layers 0-3."""
    real = json.loads((NVFP4_397B / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    return [e for e in real if not re.search(r"layers\.(\d+)\.", e) or int(re.search(r"layers\.(\d+)\.", e)[1]) < 4]  # type: ignore[index]


def _modelopt(excludes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    real = json.loads((NVFP4_397B / "hf_quant_config.json").read_text())
    hf_quant = {**real, "quantization": {**real["quantization"], "exclude_modules": excludes}}
    config = {**json.loads((NVFP4_397B / "config.json").read_text())["quantization_config"], "ignore": excludes}
    return config, hf_quant


def _as_397b(excludes: list[str], head: bool) -> Stored:
    """NVFP4 wherever the real list does not exclude (the routers: BF16, never listed)."""
    skip = wildcard_rules(excludes)
    return lambda s: None if s.keep_high_precision or skip.matches(s.module) or (s.group == MTP and not head) \
        or s.group not in (TRUNK, MTP) else NVFP4


def test_modelopt_routers_stored_bf16_and_never_excluded_are_healthy(tmp_path: Path) -> None:
    excludes = _real_397b_excludes()
    assert not [e for e in excludes if e.endswith(".mlp.gate")]  # the real list never names the router
    config, hf_quant = _modelopt(excludes)
    ckpt = build(tmp_path, "nvfp4-397b", _as_397b(excludes, head=True), config=config, hf_quant=hf_quant)
    r = doctor(ckpt).to_dict()
    assert r["ok"] and codes(r) == {"mtp-quantized"}, r["findings"]  # the head quantized as declared: a warning


def test_modelopt_head_left_bf16_but_not_excluded_is_fixed(tmp_path: Path, cli: Any) -> None:
    excludes = _real_397b_excludes()
    config, hf_quant = _modelopt(excludes)
    ckpt = build(tmp_path, "nvfp4-bf16-head", _as_397b(excludes, head=False), config=config, hf_quant=hf_quant)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"}
    [f] = r["findings"]
    assert f["files"] == ["config.json", "hf_quant_config.json"]  # one cause, both files to edit
    assert set(f["tensors"]) < set(mtp_linears(ckpt)) and "mtp*" in f["message"]  # the shared expert is excluded already
    out = fix(cli, ckpt)
    assert "mtp*" in json.loads((out / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]


# ---- ModelOpt MIXED_PRECISION ------------------------------------------------------

def _mixed() -> tuple[dict[str, Any], dict[str, Any]]:
    """nvidia/Qwen3.6-35B-A3B-NVFP4's quantized_layers for a 4-layer model: layer 0's entries (linear attention)
    for layers 0-2, layer 3's (full attention) for layer 3, and lm_head; exclude_modules as shipped."""
    hf = json.loads((MIXED_35B / "hf_quant_config.json").read_text())
    real = hf["quantization"]["quantized_layers"]
    prefix = "model.language_model.layers."
    layers = {"lm_head": real["lm_head"]}
    for i, like in ((0, 0), (1, 0), (2, 0), (3, 3)):
        layers |= {k.replace(f"{prefix}{like}.", f"{prefix}{i}."): v for k, v in real.items() if k.startswith(f"{prefix}{like}.")}
    hf_quant = {**hf, "quantization": {**hf["quantization"], "quantized_layers": layers}}
    config = json.loads((MIXED_35B / "config.json").read_text())["quantization_config"]
    config = {k: v for k, v in config.items() if k != "config_groups"} | {"quantized_layers": layers}
    return config, hf_quant


def _as_mixed(head: bool) -> Stored:
    config, _ = _mixed()
    layers = config["quantized_layers"]

    def stored(s: TensorSpec) -> str | None:
        if s.group == MTP:
            return NVFP4 if head and not s.keep_high_precision else None
        entry = layers.get(s.module) or layers.get(s.module.rsplit(".", 2)[0])  # per-expert modules under `mlp.experts`
        if entry is None:
            return None
        return foreign.MODELOPT_FP8 if entry["quant_algo"] == "FP8" else NVFP4

    return stored


def test_modelopt_mixed_precision_is_read_per_layer(tmp_path: Path) -> None:
    config, hf_quant = _mixed()
    ckpt = build(tmp_path, "mixed", _as_mixed(head=False), config=config, hf_quant=hf_quant)
    r = doctor(ckpt).to_dict()
    assert r["ok"] and codes(r) == set(), r["findings"]
    stored = open_checkpoint(ckpt).stored
    assert stored["model.language_model.layers.3.self_attn.k_proj.weight"].format == "fp8"
    assert stored["model.language_model.layers.1.mlp.experts.3.up_proj.weight"].format == NVFP4
    assert stored["lm_head.weight"].format == NVFP4


def test_modelopt_mixed_precision_head_quantized_but_unlisted(tmp_path: Path) -> None:
    config, hf_quant = _mixed()
    ckpt = build(tmp_path, "mixed-head", _as_mixed(head=True), config=config, hf_quant=hf_quant)
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"quant-declared-mismatch", "mtp-quantized"}
    [mismatch] = [f for f in r["findings"] if f["code"] == "quant-declared-mismatch"]
    assert mismatch["files"] == ["config.json", "hf_quant_config.json"] and mismatch["tensors"] == mtp_linears(ckpt)


# ---- speed ---------------------------------------------------------------------

@pytest.mark.slow
def test_exclude_rules_compile_once_on_the_397b_list() -> None:
    """The real 397B exclude list asked about 100K module names: one compiled regex, not 184 fnmatch calls each."""
    from fnmatch import fnmatchcase

    real = json.loads((NVFP4_397B / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    names = [f"model.language_model.layers.{i}.mlp.experts.{e}.{p}" for i in range(60) for e in range(512)
             for p in ("gate_proj", "up_proj", "down_proj")][:100_000]
    t0 = time.perf_counter()
    slow = [any(fnmatchcase(n, p) for p in real) for n in names[:5000]]
    per_name_fnmatch = (time.perf_counter() - t0) / 5000
    rules = wildcard_rules(real)
    t0 = time.perf_counter()
    fast = [rules.matches(n) for n in names]
    per_name_compiled = (time.perf_counter() - t0) / len(names)
    assert fast[:5000] == slow
    assert per_name_compiled * 5 < per_name_fnmatch


# ---- compressed-tensors: fused MTP experts (vLLM #41994) ---------------------------

def test_ct_fused_mtp_experts_stored_bf16_but_not_ignored(tmp_path: Path, cli: Any) -> None:
    """vLLM #41994: `ignore` lists mtp.fc, the head's attention and shared expert, not its fused BF16 experts;
    vLLM builds them quantized (it asks about `mtp.layers.0.mlp.experts.0.gate_proj`) and fails to load."""
    from mtpforge.formats.synthetic import CT_IGNORE

    ckpt = make_checkpoint(tmp_path / "ct", FAMILY, quant="nvfp4", vision=False, fused_experts=True)
    ignore = [e for e in CT_IGNORE if e not in ("re:^mtp.*", "re:.*mlp.experts.*")]
    ignore += [r"re:^model\.language_model\.layers\.\d+\.mlp\.experts.*", "mtp.fc", r"re:^mtp\.layers\.0\.self_attn.*",
               r"re:^mtp\.layers\.0\.mlp\.shared_expert.*"]
    doc = json.loads((ckpt / "config.json").read_text())
    doc["quantization_config"]["ignore"] = ignore
    (ckpt / "config.json").write_text(json.dumps(doc))
    r = doctor(ckpt).to_dict()
    assert codes(r) == {"mtp-quant-uncovered"}
    experts = "mtp.layers.0.mlp.experts"
    assert head_modules(r, "mtp-quant-uncovered") == [f"{experts}.down_proj", f"{experts}.gate_up_proj"]
    assert "re:^mtp.*" in config_of(fix(cli, ckpt))["ignore"]


@pytest.mark.parametrize("pattern", ["lm_head", "*", "mtp*", "*.mlp.gate", "*shared_expert*", "model.layers.1?.self_attn*",
                                     "model.*.experts.[0-3].*", "*mlp.experts*down_proj", "a*b*c"])
def test_compiled_wildcards_answer_as_fnmatchcase(pattern: str) -> None:
    from fnmatch import fnmatchcase

    names = ["lm_head", "mtp.fc", "model.layers.12.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "abc",
             "model.layers.0.mlp.gate", "model.layers.0.mlp.gate_proj", "model.layers.3.mlp.shared_expert_gate",
             "model.layers.3.mlp.experts.2.down_proj", "model.layers.3.mlp.experts.7.up_proj", "axbxc"]
    rules = wildcard_rules([pattern])
    assert [rules.matches(n) for n in names] == [fnmatchcase(n, pattern) for n in names]


def test_serve_passes_modelopt_fp4_only_for_all_nvfp4_exports(tmp_path: Path) -> None:
    from mtpforge.engine.launch import ServeOptions, launch_line

    config, hf_quant = _mixed()
    mixed = build(tmp_path, "mixed", _as_mixed(head=False), config=config, hf_quant=hf_quant)
    gptq = build(tmp_path, "gptq", trunk(foreign.GPTQ), config=GPTQ)
    excludes = _real_397b_excludes()
    config, hf_quant = _modelopt(excludes)
    nvfp4 = build(tmp_path, "nvfp4", _as_397b(excludes, head=True), config=config, hf_quant=hf_quant)
    for ckpt in (mixed, gptq):  # vLLM picks modelopt_mixed / gptq_marlin from the config itself
        assert "--quantization" not in launch_line(ckpt, ServeOptions()).args
    args = launch_line(nvfp4, ServeOptions()).args
    assert args[args.index("--quantization") + 1] == "modelopt_fp4"


@pytest.mark.parametrize(("fmt", "bits"), [(f, b) for f in (foreign.GPTQ, foreign.AWQ, foreign.MLX_AFFINE) for b in (4, 8)]
                         + [(foreign.MXFP4, 4), ("ct-mxfp4", 4)])
def test_each_packed_layout_resolves_to_its_logical_weight(fmt: str, bits: int) -> None:
    from mtpforge.checkpoint.header import TensorInfo
    from mtpforge.formats.stored import resolve

    stored = foreign.hollow(foreign.MXFP4 if fmt == "ct-mxfp4" else fmt, "m", 256, 512, bits=bits, group=64)
    if fmt == "ct-mxfp4":  # compressed-tensors `mxfp4-pack-quantized` names the packed values weight_packed
        stored = [("m.weight_packed" if n == "m.weight" else n, d, s) for n, d, s in stored]
    infos = {n: TensorInfo(n, d, tuple(s), 0, 0, "s.safetensors") for n, d, s in stored}
    [(name, w)] = resolve(infos, mlx_bits=bits if fmt == foreign.MLX_AFFINE else None).items()
    assert (name, w.format, w.shape, w.bits) == ("m.weight", foreign.MXFP4 if fmt == "ct-mxfp4" else fmt, (256, 512), bits)
    assert not w.missing and not w.problems


def test_each_reader_matches_module_names_as_its_engine_does() -> None:
    from mtpforge.checkpoint.quant_config import parse

    def quantized(doc: dict[str, Any], module: str) -> bool:
        return parse(doc, "config.json quantization_config").scheme_for(module) is not None

    # GPTQ: modules_in_block_to_quantize lists substrings; anything else stays BF16
    only = {**GPTQ, "dynamic": {}, "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj"], ["mlp.experts"]]}
    assert quantized(only, "model.layers.3.self_attn.q_proj") and not quantized(only, "model.layers.3.self_attn.o_proj")
    # AWQ: an entry anywhere in the name
    assert not quantized(AWQ, "model.layers.0.linear_attn.in_proj_a") and not quantized(AWQ, "mtp.layers.0.self_attn.qkv_proj")
    assert quantized(AWQ, "model.layers.0.linear_attn.in_proj_qkv")
    # AutoRound: an exact extra_config entry, then a name suffix, then block names
    ar = {**AUTOROUND, "extra_config": {"mtp.fc": {"bits": 8}, "lm_head": {"bits": 4}}}
    assert parse(ar, "c").scheme_for("mtp.fc").weight_bits == 8  # type: ignore[union-attr]
    assert quantized(ar, "model.language_model.lm_head")  # the suffix match vLLM adds for nested names
    assert not quantized(ar, "mtp.layers.0.self_attn.o_proj")  # outside block_name_to_quantize
    # Quark: a layer_quant_config pattern without `*` matches a name it contains; `*` patterns are fnmatch
    qk = {**QUARK, "layer_quant_config": {"*self_attn*": {"weight": None}}}
    assert not quantized(qk, "model.language_model.layers.3.self_attn.q_proj")
    assert quantized(qk, "model.language_model.layers.3.mlp.experts.0.up_proj")
    # fp8: exact names only, no regex
    fp8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
           "ignored_layers": ["re:^mtp.*", "model.layers.61.eh_proj"]}
    assert quantized(fp8, "mtp.fc") and not quantized(fp8, "model.layers.61.eh_proj")


@pytest.mark.parametrize(("doc", "says"), [
    ({**GPTQ, "dynamic": {"-:(unclosed": {}}}, "dynamic key '-:(unclosed' is not a valid regex"),
    ({**GPTQ, "bits": 5}, "bits 5 is not one of [2, 3, 4, 8]"),
    ({**QUARK, "global_quant_config": {"weight": {"dtype": "int3"}}}, "dtype 'int3' is not a Quark dtype"),
    ({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"}, "MIXED_PRECISION needs a non-empty quantized_layers"),
    ({**MLX, "mode": "mxfp4"}, "mode 'mxfp4' is not read"),
])
def test_malformed_configs_are_named(tmp_path: Path, doc: dict[str, Any], says: str) -> None:
    ckpt = build(tmp_path, "bad", trunk(foreign.GPTQ), config=doc, key="quantization" if "mode" in doc else "quantization_config")
    r = doctor(ckpt).to_dict()
    [f] = [f for f in r["findings"] if f["code"] == "quant-config-invalid"]
    assert says in f["message"] and f["files"] == ["config.json"]


@pytest.mark.parametrize("algo", ["FP8_PER_CHANNEL_PER_TOKEN", "fp8_pb_wo", "FP8_BLOCK_SCALES", "MXFP8"])
def test_every_modelopt_linear_algorithm_vllm_knows_is_read(algo: str) -> None:
    """vLLM `modelopt.py::LINEAR_ALGOS` (ModelOpt may write the block-FP8 name in lower case)."""
    from mtpforge.checkpoint.quant_config import parse_modelopt

    qc = parse_modelopt({"quantization": {"quant_algo": algo, "exclude_modules": ["lm_head"]}}, "hf_quant_config.json")
    assert [s.format for s in qc.schemes] == ["modelopt-fp8"] and qc.scheme_for("lm_head") is None


_VLLM_CROSSCHECK = r'''
import json, sys, types
sys.path.insert(0, sys.argv[1])
from fnmatch import fnmatch
from vllm.model_executor.layers.quantization.utils.config_utils import find_matching_patterns
from vllm.model_executor.layers.quantization.utils.gptq_utils import get_dynamic_override
from mtpforge.checkpoint.quant_match import OrderedRules, ct_rules, wildcard_rules
names, dynamic, ignore, exclude = json.loads(sys.stdin.read())
rules = OrderedRules(dynamic)
def mine(n):
    d = rules.decide(n)
    return None if d is None else (False if d[0] else d[1])
out = {
    "gptq": [n for n in names if get_dynamic_override(types.SimpleNamespace(dynamic=dynamic), n) != mine(n)],
    "ct": [n for n in names if (len(find_matching_patterns(n, ignore)[0]) > 0) != ct_rules(ignore).matches(n)],
    "modelopt": [n for n in names if any(fnmatch(n, p) for p in exclude) != wildcard_rules(exclude).matches(n)],
}
print(json.dumps(out))
'''


@pytest.mark.engine
def test_name_rules_agree_with_vllms_own_matchers(tmp_path: Path) -> None:
    """vLLM's get_dynamic_override (GPTQ), find_matching_patterns (compressed-tensors / Quark) and fnmatch (ModelOpt),
    run in the engine venv, answer as mtpforge's compiled rules for every module of the fixture and the fused names."""
    import subprocess

    from .engine import ENGINE_PYTHON, engine_available

    if not engine_available():
        pytest.skip("no engine venv")
    inv = _inventory(build(tmp_path, "names", trunk(foreign.GPTQ), config=GPTQ))
    names = sorted({s.module for s in inv.values()} | {s.fused for s in inv.values() if s.fused})
    assert len(names) > 100 and "mtp.layers.0.self_attn.qkv_proj" in names
    dynamic = {**GPTQ["dynamic"], r"+:.*layers\.(1|3)\..*": {"bits": 8}, "+:.*mtp.*": {"bits": 4}}
    ignore = [*QUARK["exclude"], r"re:.*mlp\.gate$", "model.language_model.layers.3.self_attn.q_proj"]
    exclude = json.loads((NVFP4_397B / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run([str(ENGINE_PYTHON), "-c", _VLLM_CROSSCHECK, src], input=json.dumps([names, dynamic, ignore, exclude]),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"gptq": [], "ct": [], "modelopt": []}


def test_malformed_configs_and_layouts_never_crash() -> None:
    """Seeded fuzz: any quantization config is parsed or refused with QuantConfigInvalid; any set of packed
    tensors resolves to weights (broken ones carry their problems), never a traceback."""
    import random

    from mtpforge.checkpoint.header import TensorInfo
    from mtpforge.checkpoint.quant_config import QuantConfigInvalid, parse
    from mtpforge.formats.stored import resolve

    rng = random.Random(0)
    values = [None, True, 0, -1, 4, 16, 3.5, "x", "re:(", [], ["a"], [1], {}, {"a": 1}, {"a": {}}, {"-:(": {}}, {"bits": 4}]
    keys = ["bits", "group_size", "dynamic", "modules_to_not_convert", "block_name_to_quantize", "extra_config", "exclude",
            "global_quant_config", "layer_quant_config", "ignored_layers", "quant_algo", "quantized_layers", "exclude_modules",
            "modules_in_block_to_quantize", "sym", "mode", "lm_head", "packing_format", "data_type"]
    methods = ("gptq", "awq", "auto-round", "quark", "fp8", "modelopt")
    bases = [{"quant_method": m} for m in methods] + [{"bits": 4, "group_size": 64}]
    for _ in range(3000):
        doc = {**rng.choice(bases), **{k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 5))}}
        try:
            qc = parse(doc, "config.json quantization_config")
        except QuantConfigInvalid:
            continue
        for module in ("mtp.fc", "lm_head", "model.layers.0.mlp.experts.0.gate_proj"):
            qc.scheme_for(module)
    suffixes = ["qweight", "qzeros", "scales", "g_idx", "biases", "weight", "weight_scale", "weight_packed", "weight_scale_inv"]
    dtypes = ["I32", "U32", "U8", "F16", "BF16", "F8_E4M3", "F8_E8M0", "F32"]
    for _ in range(3000):
        tensors = {f"m.{s}": TensorInfo(f"m.{s}", rng.choice(dtypes), tuple(rng.choice([0, 1, 7, 8, 64])
                                                                              for _ in range(rng.randint(0, 3))), 0, 0, "s")
                   for s in rng.sample(suffixes, rng.randint(1, 4))}
        for w in resolve(tensors, mlx_bits=rng.choice([None, 4])).values():
            assert w.format and (w.bits, w.shape, w.nbytes) is not None

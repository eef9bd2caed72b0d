"""`quantize --format gptq`: the output in GPTQ v1 (the packed tensors of `formats.gptq`, and `quantize_config.json`),
as GPTQModel writes it and vLLM's GPTQ path (gptq_marlin) reads it.

The calibration stays llm-compressor's (or RTN's): the request runs as compressed-tensors into a scratch directory
(GPTQ's loss and time per module recorded into `quant_log.csv`, `quant.gptq_log`), then one streamed rewrite
repacks each INT weight (`formats.gptq`, one weight in memory at a time) and publishes through
`surgery.stage.apply_plan`, so the output appears whole or not at all. The integers and scales are the
same, so both outputs dequantize to the same weights, value for value.

What stays unquantized is declared with `dynamic` `-:` rules (vLLM `gptq_utils.py::get_dynamic_override`, `re.match`
on vLLM's own module prefixes): the vision tower, the MTP head (or its unquantized modules), and every trunk Linear
the scope left out, under its checkpoint name, vLLM's names (`model.language_model.model.layers.N...` for the VLM
class, `model.layers.N...` for the text-only one) and its fused name (`in_proj_ba`, `qkv_proj`, `gate_up_proj`).
`desc_act` is true only when a weight's groups really follow activation order (a stored group index that is not
`i // group_size`); llm-compressor's `static` order keeps contiguous groups, so it is written `desc_act: false`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import Checkpoint, open_checkpoint
from mtpforge.checkpoint.header import DTYPE_BITS, TensorInfo
from mtpforge.errors import CheckpointError, UsageError
from mtpforge.families import MTP, TRUNK, VISION, Family, detect_family, expected_inventory
from mtpforge.families.base import LINEAR
from mtpforge.formats import gptq
from mtpforge.formats.schemes import COMPRESSED_TENSORS, INT, SCHEMES
from mtpforge.formats.stored import CT_INT, StoredWeight
from mtpforge.quant import gptq_log
from mtpforge.surgery.output import make_plan
from mtpforge.surgery.rebuild import rebuild
from mtpforge.surgery.sources import Computed
from mtpforge.surgery.writeplan import INDEX_NAME, TensorCopy, WritePlan, index_document

QUANTIZE_CONFIG = "quantize_config.json"
QUANT_LOG = "quant_log.csv"  # GPTQ's loss and time per module (`quant.gptq_log`)
REPACK = f"repack every INT weight as {gptq.DESCRIPTION} and write quantize_config.json"


def check_gptq_request(scheme: str) -> None:
    """GPTQ holds symmetric INT weights (vLLM's GPTQ kernels take no other: `auto_gptq.py` `TYPE_MAP`)."""
    s = SCHEMES.get(scheme)
    if s is not None and (s.kind != INT or not s.symmetric):
        raise UsageError(f"--format gptq holds symmetric INT weights, not {scheme}",
                         hint="--scheme w4a16 or w8a16, or --format compressed-tensors")


def quantize_as_gptq(quantize: Callable[..., WritePlan], request: dict[str, Any]) -> WritePlan:
    """Run `quantize(**request)` as compressed-tensors into a scratch directory beside `out`, then publish it repacked as
    GPTQ (`request`: `quantize`'s own arguments). Returns the plan of what was written (dry run: the plan, noted)."""
    from mtpforge.surgery.stage import apply_plan, check_destination

    check_gptq_request(request["scheme"])
    as_ct = {**request, "checkpoint_format": COMPRESSED_TENSORS}
    damp = 0.01 if request["method"] == "gptq" else None  # quant.calibrated's GPTQ dampening
    if request["dry_run"]:
        return dry_run_plan(quantize(**as_ct), damp_percent=damp, method=request["method"])
    out = Path(request["out"])
    check_destination(Path(request["base"]), out, overwrite=request["overwrite"])
    # A fixed name beside `out`, not a fresh temporary one: GPTQ keeps its finished layers beside the compressed-tensors
    # output (`quant.resume`), so an interrupted run started again resumes there.
    scratch = out.resolve().with_name(f".{out.name}.compressed-tensors")
    calibrated = request["method"] == "gptq" and importlib.util.find_spec("llmcompressor") is not None
    try:
        log: contextlib.AbstractContextManager[list[tuple[str, float, float]]] = \
            gptq_log.recorded() if calibrated else contextlib.nullcontext([])
        with log as losses:
            quantize(**{**as_ct, "out": scratch, "overwrite": True})
        if losses:  # linked into the output with the other files
            (scratch / QUANT_LOG).write_text(gptq_log.as_csv(losses))
        written = gptq_plan(open_checkpoint(scratch), damp_percent=damp, method=request["method"])
        apply_plan(written, out, overwrite=request["overwrite"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return replace(written, source_dir=Path(request["base"]))


def gptq_plan(ckpt: Checkpoint, *, damp_percent: float | None = None, method: str = "rtn") -> WritePlan:
    """The plan rewriting the compressed-tensors INT checkpoint `ckpt` as GPTQ v1 (pure: headers and group indices
    read, no weight). Raises CheckpointError for weights GPTQ cannot hold (another format, zero points)."""
    quantized = _int_weights(ckpt)
    bits, group = _one_scheme(ckpt, quantized)
    desc_act = any(_activation_ordered(ckpt, w) for w in quantized.values())
    qc = _config(ckpt.config, ckpt.tensors, set(quantized), bits=bits, group=group, desc_act=desc_act,
                 damp_percent=damp_percent, method=method)
    drop = {w.parts[s].name for w in quantized.values() for s in gptq.CT_COMPANIONS if s in w.parts}
    repack = {w.parts[gptq.CT_PACKED].name: partial(_gptq_copies, ckpt, w, bits) for w in quantized.values()}
    config = {**ckpt.config, "quantization_config": qc}
    plan = make_plan("quantize", ckpt.root, rebuild(ckpt, drop=drop, replace=repack), config, None,
                     _actions(qc, len(quantized)), [])
    return replace(plan, linked=tuple(f for f in plan.linked if f != QUANTIZE_CONFIG),
                   json_files={**plan.json_files, QUANTIZE_CONFIG: qc})


def dry_run_plan(ct: WritePlan, *, damp_percent: float | None, method: str) -> WritePlan:
    """The GPTQ output's plan from the compressed-tensors plan of the same request (`--dry-run`: nothing is calibrated
    or read, so each weight's tensors are listed, not computed; no activation order is known, so desc_act: false)."""
    config = ct.json_files["config.json"]
    groups = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    bits, group = groups["num_bits"], groups["group_size"] if groups["strategy"] == "group" else None
    shards, quantized = [], set()
    for shard in ct.written:
        copies: list[TensorCopy] = []
        scales = {t.name.rsplit(".", 1)[0]: t for t in shard.tensors if t.name.endswith(f".{gptq.CT_SCALE}")}
        for t in shard.tensors:
            module, _, suffix = t.name.rpartition(".")
            if suffix == gptq.CT_PACKED and module in scales:
                quantized.add(module)
                out, inp, n_groups = t.shape[0], t.shape[1] * 32 // bits, scales[module].shape[1]
                copies += [TensorCopy(f"{module}.{k}", dtype, shape, Computed(f"{module}.{k}", _not_computed,
                                                                                DTYPE_BITS[dtype] // 8 * math.prod(shape)))
                           for k, (dtype, shape) in gptq.stored_shapes(out, inp, bits, n_groups).items()]
            elif not (suffix in gptq.CT_COMPANIONS and module in scales):
                copies.append(t)
        shards.append(replace(shard, tensors=tuple(copies)))
    from mtpforge.checkpoint import as_checkpoint

    base = as_checkpoint(ct.source_dir)
    qc = _config(config, base.tensors, quantized, bits=bits, group=group, desc_act=False, damp_percent=damp_percent,
                 method=method)
    index = ct.json_files[INDEX_NAME]
    rewritten = {s.name for s in shards}
    weight_map = {n: f for n, f in index["weight_map"].items() if f not in rewritten}  # the linked shards' tensors
    sizes = {n: base.tensors[n].nbytes for n in weight_map if n in base.tensors}
    for shard in shards:
        weight_map.update({t.name: shard.name for t in shard.tensors})
        sizes.update({t.name: t.nbytes for t in shard.tensors})
    json_files = {**ct.json_files, "config.json": {**config, "quantization_config": qc}, QUANTIZE_CONFIG: qc,
                  INDEX_NAME: index_document(weight_map, sizes)}
    return replace(ct, written=tuple(shards), json_files=json_files, actions=(*ct.actions, *_actions(qc, len(quantized))))


def _not_computed() -> bytes:
    raise AssertionError("a dry-run plan is never written")  # a bug if reached


def _config(config: dict[str, Any], tensors: Mapping[str, Any], quantized: set[str], *, bits: int, group: int | None,
            desc_act: bool, damp_percent: float | None, method: str) -> dict[str, Any]:
    """The GPTQ quantization config of an output whose INT modules are `quantized`, checked as vLLM would read it."""
    family = detect_family(config)
    dynamic = exclusion_rules(family, config, tensors, quantized)
    quantizer = [f"mtpforge:{importlib.metadata.version('mtpforge')}"]
    if method != "rtn":
        quantizer.append(f"llmcompressor:{importlib.metadata.version('llmcompressor')}")
    qc = gptq.quantization_config(bits=bits, group_size=group, desc_act=desc_act, dynamic=dynamic,
                                  damp_percent=damp_percent, quantizer=quantizer)
    check_rules(family, config, tensors, quantized, qc)
    return qc


def _actions(qc: dict[str, Any], count: int) -> list[str]:
    order = "activation-ordered groups (desc_act)" if qc["desc_act"] else "contiguous groups (desc_act: false)"
    group = qc["group_size"] if qc["group_size"] != -1 else "per channel"
    return [f"{REPACK}: {count} weights, {qc['bits']}-bit, group {group}, {order}",
            f"leave {len(qc['dynamic'])} module patterns unquantized with dynamic -: rules"]


def _int_weights(ckpt: Checkpoint) -> dict[str, StoredWeight]:
    """module -> its compressed-tensors INT weight; CheckpointError for any weight GPTQ cannot hold."""
    out: dict[str, StoredWeight] = {}
    for w in ckpt.stored.values():
        if not w.quantized:
            continue
        module = w.name.rsplit(".", 1)[0]
        if w.format != CT_INT or w.shape is None or len(w.shape) != 2:
            raise CheckpointError(f"{ckpt.root}: {w.name} is stored as {w.format}, which GPTQ does not hold",
                                  hint="--format gptq repacks INT weights (--scheme w4a16 / w8a16)")
        if gptq.CT_ZERO_POINT in w.parts:
            raise CheckpointError(f"{ckpt.root}: {module} has zero points; GPTQ output holds symmetric weights",
                                  hint="--scheme w4a16 or w8a16")
        out[module] = w
    if not out:
        raise CheckpointError(f"{ckpt.root}: no INT weight to repack as GPTQ", hint="quantize with --scheme w4a16")
    return out


def _one_scheme(ckpt: Checkpoint, weights: dict[str, StoredWeight]) -> tuple[int, int | None]:
    """The bits and group size of the compressed-tensors config (one GPTQ config declares one), which every weight has."""
    groups = (ckpt.config.get("quantization_config") or {}).get("config_groups") or {}
    declared = {(g["weights"]["num_bits"], g["weights"].get("group_size") if g["weights"].get("strategy") == "group" else None)
                for g in groups.values() if isinstance(g, dict) and g.get("weights")}
    if len(declared) != 1:
        raise CheckpointError(f"{ckpt.root}: {len(declared)} weight schemes in the compressed-tensors config; "
                              "one GPTQ config declares one", hint="quantize every weight with one scheme")
    bits, group = declared.pop()
    for module, w in weights.items():
        inp = w.shape[1] if w.shape else 0
        if w.bits != bits or w.parts[gptq.CT_SCALE].shape[1] != (inp // group if group else 1):
            raise CheckpointError(f"{ckpt.root}: {module} is not stored as the config's {bits}-bit, group {group} scheme",
                                  hint=f"run `mtpforge doctor {ckpt.root}`")
    return bits, group


def _activation_ordered(ckpt: Checkpoint, w: StoredWeight) -> bool:
    from mtpforge.checkpoint.tensors import read_tensor

    info = w.parts.get(gptq.CT_G_IDX)
    return info is not None and not gptq.is_ordered(read_tensor(ckpt, info), w.parts[gptq.CT_SCALE].shape[1])


def _gptq_copies(ckpt: Checkpoint, w: StoredWeight, bits: int, _packed: TensorInfo) -> list[TensorCopy]:
    """The GPTQ tensors standing for `w`, computed from its compressed-tensors tensors when the writer reaches them."""
    module = w.name.rsplit(".", 1)[0]
    out, inp = w.shape or (0, 0)
    memo: dict[str, Any] = {}

    def part(key: str) -> bytes:
        import torch

        from mtpforge.checkpoint.tensors import read_tensor

        if not memo:  # repack once, when the writer reaches the first tensor
            g_idx = w.parts.get(gptq.CT_G_IDX)
            try:
                memo.update(gptq.from_compressed_tensors(
                    read_tensor(ckpt, w.parts[gptq.CT_PACKED]), read_tensor(ckpt, w.parts[gptq.CT_SCALE]),
                    read_tensor(ckpt, g_idx) if g_idx is not None else None, bits=bits, shape=(out, inp)))
            except gptq.ScaleNotExact as e:
                raise CheckpointError(f"{ckpt.root}: {module}.{gptq.CT_SCALE}: {e}; GPTQ stores F16 scales",
                                      hint="--format compressed-tensors keeps the scales as they are") from None
        return memo.pop(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes()

    groups = w.parts[gptq.CT_SCALE].shape[1]
    copies = []
    for key, (dtype, shape) in gptq.stored_shapes(out, inp, bits, groups).items():
        name = f"{module}.{key}"
        nbytes = DTYPE_BITS[dtype] // 8 * math.prod(shape)
        copies.append(TensorCopy(name, dtype, shape, Computed(name, partial(part, key), nbytes)))
    return copies


def exclusion_rules(family: Family, config: dict[str, Any], tensors: Mapping[str, Any],
                    quantized: set[str]) -> dict[str, dict[str, Any]]:
    """GPTQ `dynamic` `-:` rules for every Linear left unquantized (see the module docstring)."""
    linears = _linears(family, config, tensors)
    mtp = re.escape(family.mtp_prefix)
    rules: dict[str, dict[str, Any]] = {}
    if any(s.group == VISION for s in linears.values()) or family.has_vision(config):
        rules[f"-:(?:.*\\.)?{re.escape(family.vision_prefix.rsplit('.', 1)[-1])}\\..*"] = {}
    head = [m for m, s in linears.items() if s.group == MTP]
    if head and not any(m in quantized for m in head):
        rules[f"-:{mtp}\\..*"] = {}
    else:
        for name in sorted(_unquantized(linears, quantized, MTP)):
            rules[f"-:{re.escape(name)}$"] = {}
    by_suffix: dict[str, list[str]] = {}
    prefixes = tuple(f"{p}." for p in family.trunk_prefixes(config))
    for name in sorted(_unquantized(linears, quantized, TRUNK)):
        rel = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
        m = re.match(r"layers\.(\d+)\.(.+)", rel)
        if m:
            by_suffix.setdefault(m.group(2), []).append(m.group(1))
        else:
            rules[f"-:(?!{mtp}\\.)(?:.*\\.)?{re.escape(rel)}$"] = {}
    same_layers: dict[str, list[str]] = {}  # one rule per set of layers: in_proj_a, in_proj_b and in_proj_ba share one
    for suffix, layers in sorted(by_suffix.items()):
        same_layers.setdefault("|".join(sorted(set(layers), key=int)), []).append(re.escape(suffix))
    for alternatives, suffixes in same_layers.items():
        rules[f"-:(?!{mtp}\\.)(?:.*\\.)?layers\\.(?:{alternatives})\\.(?:{'|'.join(suffixes)})$"] = {}
    return rules


def _linears(family: Family, config: dict[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    expected = expected_inventory(family, config, tensors)
    return {s.module: s for s in expected.values() if s.kind == LINEAR}


def _unquantized(linears: dict[str, Any], quantized: set[str], group: str) -> set[str]:
    """The unquantized Linear modules of `group`, and the fused names all of whose members are unquantized."""
    left = {m for m, s in linears.items() if s.group == group and m not in quantized}
    fused: dict[str, list[str]] = {}
    for m, s in linears.items():
        if s.group == group and s.fused:
            fused.setdefault(s.fused, []).append(m)
    return left | {f for f, members in fused.items() if all(m in left for m in members)}


def vllm_names(family: Family, config: dict[str, Any], name: str) -> list[str]:
    """`name` and the module prefixes vLLM gives it (Qwen3.5's VLM class nests the text model under
    `language_model.model`, its text-only class under `model`: vllm/model_executor/models/qwen3_5.py)."""
    for p in family.trunk_prefixes(config):
        if name.startswith(p + "."):
            rel = name[len(p) + 1:]
            return [name, f"model.language_model.model.{rel}", f"model.{rel}"]
    return [name]


def check_rules(family: Family, config: dict[str, Any], tensors: Mapping[str, Any], quantized: set[str],
                qc: dict[str, Any]) -> None:
    """The config, read as vLLM reads it (`checkpoint.quant_readers.parse_gptq`), quantizes exactly the stored GPTQ
    modules, under checkpoint, vLLM and fused names (a guard: a wrong rule is a bug, never a silent load)."""
    from mtpforge.checkpoint.quant_readers import parse_gptq

    decide = parse_gptq(qc, "config.json").scheme_for
    linears = _linears(family, config, tensors)
    fused: dict[str, list[str]] = {}
    for m, s in linears.items():
        if s.fused:
            fused.setdefault(s.fused, []).append(m)
    wanted = {m: m in quantized for m in linears}
    wanted.update({f: all(m in quantized for m in members) for f, members in fused.items()})
    wrong = [n for module, q in wanted.items() for n in vllm_names(family, config, module) if (decide(n) is not None) != q]
    if wrong:
        raise CheckpointError(f"the GPTQ dynamic rules decide {wrong[0]} wrongly (and {len(wrong) - 1} more)",
                              hint="a bug in mtpforge's GPTQ output: report it with the scope used")

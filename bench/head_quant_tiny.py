"""The MTP head quantized three ways on the bundled tiny model: BF16, RTN INT4 g32, GPTQ INT4 g32 on its real inputs.

    python bench/head_quant_tiny.py [--new-tokens 96] [--sources base,finetune] [--json bench/out/head_quant_tiny.json]

Sources: the tiny base (its own trained head) and the tiny finetune with the
base's head grafted (seed 000's situation: tmax-27b with Qwen3.6-27B's head).
Each source's trunk is quantized once as seed 000's recipe does (AWQ W4A16
asymmetric g32, MSE observer, full attention + MLP, head kept BF16); the head
variants are then written from that same trunk output (`quant.head.head_plan`):
RTN min-max (what `--mtp quantize` did before), RTN on the MSE grid, GPTQ on the
MSE grid (seed 000's recipe). The bundled prompts are split: 11 calibrate (AWQ
and the head's capture), the other 11 measure. Per variant: acceptance per
draft position with 95 % Wilson intervals over the trunk's greedy continuations
(the same sequences for every variant: the trunk is the same), and the head's
own KLD: KL(BF16 head || quantized head) of the first draft's distribution over
every position of those sequences. The anchor is the BF16 head on the same
quantized trunk.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from report import emit  # bench/report.py, beside this script

MODELS = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models"
SEED_000 = {"scheme": "w4a16-asym", "group_size": 32, "scope": "attention-mlp", "method": "awq", "observer": "mse"}
VARIANTS = {"rtn-minmax": ("rtn", "minmax"), "rtn-mse": ("rtn", "mse"), "gptq-mse": ("gptq", "mse")}


def head_variant(source: Path, trunk: Path, out: Path, method: str, observer: str, token_ids: list[list[int]]) -> None:
    from mtpforge.families import MTP
    from mtpforge.quant.head import head_plan
    from mtpforge.quant.plan import mtp_ignore, quant_plan
    from mtpforge.surgery.stage import apply_plan

    plan = quant_plan(source, mtp="quantize", **{**SEED_000, "observer": observer})
    head = {n: s for n, s in plan.chosen.items() if s.group == MTP}
    written = head_plan(trunk, head, scheme=plan.scheme, group=32, weights=plan.weights, ignore=plan.ignore,
                        mtp_pattern=mtp_ignore(plan.family), method=method, token_ids=token_ids)
    apply_plan(written, out)


def head_kld(bf16: Any, quantized: Any, sequences: list[list[int]]) -> float:
    """Mean KL(BF16 head || quantized head) of the first draft, over every position of `sequences` (same trunk)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            hidden, _ = bf16.trunk_forward(ids)
            n = ids.shape[1]
            pos = torch.arange(n - 1)[None]
            p = torch.log_softmax(bf16.logits(bf16.head(bf16.embed(ids[:, 1:]), hidden[:, :-1], pos)), -1)
            q = torch.log_softmax(quantized.logits(quantized.head(quantized.embed(ids[:, 1:]), hidden[:, :-1], pos)), -1)
            total += float((p.exp() * (p - q)).sum(-1).sum())
            count += n - 1
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--sources", default="base,finetune", help="base, finetune (the finetune with the base's head grafted)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from mtpforge.prompts import load_prompts, tokenize
    from mtpforge.quant import quantize
    from mtpforge.quant.calibration_data import Calibration, token_ids
    from mtpforge.reference.model import load_reference
    from mtpforge.surgery.graft import graft
    from mtpforge.verify.acceptance import greedy_continuation, measure_acceptance
    from mtpforge.verify.divergence import measure_divergence

    prompts = load_prompts(None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "calibration.json").write_text(json.dumps(prompts[11:]))
        sources = {"base": MODELS / "tiny-qwen3.5"} if "base" in args.sources else {}
        if "finetune" in args.sources:
            graft(str(MODELS / "tiny-qwen3.5-finetune"), str(MODELS / "tiny-qwen3.5"), str(work / "finetune-grafted"))
            sources["finetune + base head"] = work / "finetune-grafted"
        for label, source in sources.items():
            t0 = time.perf_counter()
            trunk = work / f"{label}-bf16-head".replace(" ", "_")
            quantize(str(source), trunk, **SEED_000, calibration=str(work / "calibration.json"))
            trunk_s = time.perf_counter() - t0
            calib = token_ids(source, Calibration(str(work / "calibration.json")))
            outs = {"bf16": trunk}
            for name, (method, observer) in VARIANTS.items():
                t0 = time.perf_counter()
                outs[name] = trunk.with_name(trunk.name.replace("bf16-head", name))
                head_variant(source, trunk, outs[name], method, observer, calib)
                print(f"{label} {name}: head written in {time.perf_counter() - t0:.1f} s", flush=True)
            anchor = load_reference(trunk)
            eval_ids = tokenize(trunk, prompts[:11], 64)
            sequences = [(len(p), greedy_continuation(anchor, p, args.new_tokens)) for p in eval_ids]
            trunk_kld = measure_divergence(anchor, load_reference(source), [s for _, s in sequences]).to_dict()
            for name, out in outs.items():
                model = anchor if name == "bf16" else load_reference(out)
                acc = measure_acceptance(model, sequences, args.k).to_dict()
                kld = 0.0 if name == "bf16" else head_kld(anchor, model, [s for _, s in sequences])
                rows.append({"source": label, "head": name, "acceptance": acc, "head_kld_nats": round(kld, 5),
                             "trunk_kld_vs_source_nats": trunk_kld.get("kl_mean_nats"), "trunk_awq_s": round(trunk_s, 1)})
                print(json.dumps(rows[-1]), flush=True)
    emit("head_quant_tiny", {"k": args.k, "new_tokens": args.new_tokens, "eval_prompts": 11, "calibration_prompts": 11,
                             "rows": rows}, args.json)


if __name__ == "__main__":
    main()

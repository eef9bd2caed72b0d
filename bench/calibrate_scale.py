"""GPTQ calibration at real Qwen3.6-27B widths on CPU: time and peak RSS per layer, extrapolated to the whole model.

    python bench/calibrate_scale.py [--tokens 4096] [--layers 0,3,mtp] [--json bench/out/calibrate_scale.json]

For each named layer of the real Qwen3.6-27B inventory (0: a Gated DeltaNet
layer, 3: a full-attention layer, mtp: the MTP head's layer), every Linear
seed 004's scope quantizes (the head's: seed 000's, fc kept BF16) gets a random
N(0, 0.02) BF16 weight of its real shape and `--tokens` correlated random
activations of its real input width. Timed per weight, with the same calls the
product makes (`quant/head_gptq.py`): the Hessian accumulation
(llm-compressor's `accumulate_hessian`, 1,024 tokens at a time), the observer
(min-max) and GPTQ's solve (`quantize_weight`, dampening 0.01, blocks of 128),
and the packing. The anchor is the same weight quantized by RTN on the same grid
(`observed_int_tensors`), timed in the same run. Peak RSS is the process's
`ru_maxrss` after each layer. The extrapolation to the model (48 GDN + 16
attention layers, 1 head layer) scales the accumulation linearly to the cards'
512 x 2048 tokens; the layers' forward passes (which llm-compressor runs twice
per layer) are not included.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

from report import emit  # bench/report.py, beside this script

SEED_TOKENS = 512 * 2048  # the cards' calibration: 512 samples x 2048 tokens
CHUNK = 1024


def layer_weights(layer: str) -> dict[str, list[int]]:
    """Name -> [out, in] of the Linear weights of `layer` ("0", "3" or "mtp") that the seeds quantize."""
    from mtpforge.testing.replica import reference_inventory

    _, tensors = reference_inventory()
    prefix = "mtp.layers.0." if layer == "mtp" else f"model.language_model.layers.{layer}."
    wanted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj_qkv", "in_proj_z", "out_proj")
    return {t["name"]: t["shape"] for t in tensors if t["name"].startswith(prefix) and t["name"].endswith(".weight")
            and t["name"].split(".")[-2] in wanted}


def time_weight(shape: list[int], tokens: int, seed: int) -> dict[str, Any]:
    import torch
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian

    from mtpforge.formats.schemes import SCHEMES
    from mtpforge.quant.head_gptq import gptq_int_tensors
    from mtpforge.quant.observers import observed_int_tensors

    out, inp = shape
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(out, inp, generator=g) * 0.02).to(torch.bfloat16)
    mix = torch.randn(64, inp, generator=g) / 8
    linear = torch.nn.Linear(inp, 1, bias=False)
    t0 = time.perf_counter()
    hessian, count = make_empty_hessian(linear), torch.zeros(())
    for start in range(0, tokens, CHUNK):
        x = torch.randn(min(CHUNK, tokens - start), 64, generator=g) @ mix
        hessian, count = accumulate_hessian(x[None], linear, hessian, count)
    t1 = time.perf_counter()
    weights = {**SCHEMES["w4a16"].weights_config(128), "observer": "minmax"}
    gptq_int_tensors(w, hessian / count, weights)
    t2 = time.perf_counter()
    observed_int_tensors(w, weights)
    t3 = time.perf_counter()
    return {"shape": shape, "hessian_s": round(t1 - t0, 2), "gptq_s": round(t2 - t1, 2), "rtn_s": round(t3 - t2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--layers", default="0,3,mtp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    layers = {}
    for layer in args.layers.split(","):
        rows = {name: time_weight(shape, args.tokens, i) for i, (name, shape) in enumerate(layer_weights(layer).items())}
        total = {k: round(sum(r[k] for r in rows.values()), 2) for k in ("hessian_s", "gptq_s", "rtn_s")}
        layers[layer] = {"weights": rows, "total": total,
                         "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
        print(layer, total, layers[layer]["peak_rss_gib"], flush=True)

    def full(layer: str) -> float:  # one layer's seconds at the cards' token count
        t = layers[layer]["total"]
        return t["hessian_s"] * SEED_TOKENS / args.tokens + t["gptq_s"]

    estimate = {}
    if {"0", "3"} <= set(layers):
        estimate["trunk_hours"] = round((48 * full("0") + 16 * full("3")) / 3600, 2)
    if "mtp" in layers:
        estimate["head_minutes"] = round(full("mtp") / 60, 2)
    emit("calibrate_scale", {"tokens": args.tokens, "layers": layers, "at_512x2048_tokens": estimate}, args.json)


if __name__ == "__main__":
    main()

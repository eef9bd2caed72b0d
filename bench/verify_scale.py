"""verify at Qwen3.6-27B scale with the streamed reference runtime: peak RSS and time per parameter.

    python bench/verify_scale.py [--workdir DIR] [--layers 4] [--prompts 4] [--tokens 64] [--json bench/out/verify_scale.json]

Two checkpoints with the real Qwen3.6-27B widths (hidden 5120, 248,320-token vocabulary, 17,408 MLP, 48/16 GDN
heads, 24/4 attention heads of 256, the 1-layer MTP head), written fresh in the work directory:

- a slice: the first `--layers` decoder layers of the real layer pattern (3 Gated DeltaNet + 1 attention for 4),
  embeddings, lm_head and the MTP head, every weight random BF16 (written for real, ~7 GB for 4 layers);
- the hollow replica (`mtpforge.testing.replica`): all 64 layers, the real 1,199 tensors, zeros from sparse holes.

Each runs `mtpforge verify --runtime streamed --sequences FILE` (random token ids, teacher-forced, k=3) as a child
process, like a user would; peak RSS is the child's `ru_maxrss`. Anchors, measured in the same run on the same
machine: one read of the checkpoint's bytes (the shards read once, 64 MiB at a time) plus `2 x params x tokens`
FLOPs at the fp32 GEMM rate this machine reaches on a 5120 x 17408 projection. The ratio says how far the streamed
runtime is from reading the weights once and doing the trunk's arithmetic once.

Extrapolation to the full 27B on this CPU: the slice's per-layer time, from the slice and the replica measured
together (time(64 layers) - time(slice)) / (64 - layers). No GPU was lent to this project: the GPU column
is not measured, and this script never prints a CUDA figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import emit  # bench/report.py, beside this script

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.writer import TensorData
from mtpforge.testing.factory import write_shards, write_tokenizer_files
from mtpforge.testing.replica import make_hollow_replica, reference_inventory

CHUNK = 64 << 20


def make_slice(out: Path, layers: int, seed: int = 0) -> Path:
    """The real 27B inventory cut to `layers` decoder layers (no vision tower), every weight random BF16."""
    config, inventory = reference_inventory()
    config = json.loads(json.dumps(config))
    text = config["text_config"]
    text["num_hidden_layers"] = layers
    text["layer_types"] = text["layer_types"][:layers]
    config["language_model_only"] = True
    keep = []
    for t in inventory:
        parts = t["name"].split(".")
        if "visual" in parts:
            continue
        if "layers" in parts and parts[0] != "mtp" and int(parts[parts.index("layers") + 1]) >= layers:
            continue
        keep.append(TensorData(t["name"], t["dtype"], tuple(t["shape"])))
    out.mkdir(parents=True)
    write_shards(out, keep, shards=max(1, layers // 2), index=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(out, vocab_size=16)
    _fill_random(out, seed)
    return out


def _fill_random(root: Path, seed: int) -> None:
    """Random BF16 in every tensor's bytes: sign, an exponent for |x| in [2^-8, 2^-4), a random mantissa.

    One 64 MiB random block, written at a random offset per chunk: the values are random, and making them costs
    a write, not minutes of a random generator on a shared 2-core machine.
    """
    rng = np.random.default_rng(seed)
    n = CHUNK // 2
    sign = rng.integers(0, 2, 2 * n, dtype=np.uint16) << 15
    block = (sign | rng.integers(119, 123, 2 * n, dtype=np.uint16) << 7 | rng.integers(0, 128, 2 * n, dtype=np.uint16))
    raw = block.astype("<u2").tobytes()
    ckpt = open_checkpoint(root)
    for info in ckpt.tensors.values():
        with open(root / info.shard, "r+b") as f:
            f.seek(info.begin)
            left = info.nbytes
            while left:
                size = min(left, CHUNK)
                start = 2 * int(rng.integers(0, n))
                f.write(raw[start:start + size])
                left -= size


def text_params(root: Path) -> int:
    ckpt = open_checkpoint(root)
    return sum(math.prod(t.shape) for n, t in ckpt.tensors.items() if "visual" not in n.split("."))


def write_sequences(path: Path, prompts: int, tokens: int, vocab: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    seqs = [{"prompt_tokens": tokens // 2, "ids": [rng.randrange(vocab) for _ in range(tokens)]} for _ in range(prompts)]
    path.write_text(json.dumps({"schema": "mtpforge.sequences/1", "source": "random ids (bench)", "sequences": seqs}))
    return prompts * tokens


def read_once(root: Path) -> float:
    """Seconds to read every shard's bytes once."""
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    for shard in sorted(root.glob("*.safetensors")):
        with open(shard, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def gemm_flops(rows: int) -> float:
    """FLOP/s of an fp32 [rows, 5120] x [5120, 17408] matmul in torch (the MLP's widest projection)."""
    import torch

    x, w = torch.randn(rows, 5120), torch.randn(17408, 5120)
    x @ w.T
    start, reps = time.perf_counter(), 3
    for _ in range(reps):
        x @ w.T
    return 2 * rows * 5120 * 17408 * reps / (time.perf_counter() - start)


def run_verify(root: Path, sequences: Path, log: Path, reference: bool = False) -> dict[str, Any]:
    """Wall seconds, peak RSS (this child's own ru_maxrss) and the report of one `mtpforge verify` process.

    With `reference`, the checkpoint is also its own `--reference`: KLD with both models streamed (KL = 0).
    """
    cmd = [sys.executable, "-m", "mtpforge", "verify", str(root), "--runtime", "streamed", "--sequences", str(sequences),
           "--k", "3", "--json", *(["--reference", str(root)] if reference else [])]
    start = time.perf_counter()
    with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: checks failed (random weights draft nothing: "collapsed")
        raise SystemExit(f"{cmd} failed (exit {os.waitstatus_to_exitcode(status)}; -9 is the OOM killer): "
                         f"{log.with_suffix('.err').read_text()[-2000:]}")
    return {"seconds": elapsed, "peak_rss": usage.ru_maxrss * 1024, "report": json.loads(log.read_text())}


def measure(name: str, root: Path, prompts: int, tokens: int, reference: bool = False) -> dict[str, Any]:
    seq_file = root.parent / f"{root.name}.sequences.json"
    total_tokens = write_sequences(seq_file, prompts, tokens, vocab=248320)
    params = text_params(root)
    got = run_verify(root, seq_file, root.parent / f"{root.name}.verify.json", reference)
    read_s = read_once(root)
    flops = gemm_flops(total_tokens)
    anchor = read_s + 2 * params * total_tokens / flops
    return {"checkpoint": name, "text_params": params, "tokens": total_tokens, "prompts": prompts,
            "verify_seconds": round(got["seconds"], 1), "peak_rss_gib": round(got["peak_rss"] / 2**30, 2),
            "read_once_seconds": round(read_s, 1), "gemm_gflops": round(flops / 1e9, 1),
            "anchor_seconds": round(anchor, 1), "ratio_to_anchor": round(got["seconds"] / anchor, 2),
            "ns_per_param_token": round(got["seconds"] / params / total_tokens * 1e9, 3),
            "drafts": got["report"]["acceptance"]["drafts"], "kld": got["report"]["divergence"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--hollow-prompts", type=int, default=2)
    parser.add_argument("--hollow-tokens", type=int, default=32)
    parser.add_argument("--no-hollow", action="store_true", help="measure the slice only")
    parser.add_argument("--reference", action="store_true", help="verify each checkpoint against itself: KLD, both streamed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtpforge-verify-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        sliced = make_slice(work / "slice", args.layers)
        write_s = time.perf_counter() - t
        slice_result = measure(f"27B slice, {args.layers} layers, random BF16", sliced, args.prompts, args.tokens, args.reference)
        slice_result["write_seconds"] = round(write_s, 1)
        shutil.rmtree(sliced)  # ~7 GB of random bytes: gone before the replica is made
        hollow_result = None
        if not args.no_hollow:
            hollow = make_hollow_replica(work / "hollow")
            hollow_result = measure("27B hollow replica, 64 layers, zeros", hollow, args.hollow_prompts, args.hollow_tokens,
                                    args.reference)
    results: dict[str, Any] = {"slice": slice_result, "hollow_replica": hollow_result,
                               "gpu": "not measured: no GPU was lent to this project"}
    if hollow_result is not None:
        # per layer-token, from the two checkpoints measured together (the replica has the fixed parts too)
        results["per_layer_token_seconds"] = round((hollow_result["verify_seconds"] / hollow_result["tokens"]
                                                    - slice_result["verify_seconds"] / slice_result["tokens"])
                                                   / (64 - args.layers), 4)
        # the full 27B at verify's defaults on the bundled prompts: one read of the weights, the rest scales with tokens
        default_tokens = 22 * (64 + 128)
        compute = max(hollow_result["verify_seconds"] - hollow_result["read_once_seconds"], 0.0)
        results["extrapolated_cpu_seconds_at_defaults"] = round(
            hollow_result["read_once_seconds"] + compute * default_tokens / hollow_result["tokens"])
        results["default_tokens"] = default_tokens
    emit("verify_scale", results, args.json)


if __name__ == "__main__":
    main()

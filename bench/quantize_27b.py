"""RTN W4A16 of a Qwen3.6-27B-shaped checkpoint: mtpforge's streamed quantize against llm-compressor's data-free path.

    python bench/quantize_27b.py [--layers 4] [--workdir DIR] [--llmcompressor-python /path/to/venv/bin/python]
                                 [--json bench/out/quantize_27b.json]

The input is the real Qwen3.6-27B inventory (names, shapes, dtypes, config) cut
to the first `--layers` decoder layers (3 Gated DeltaNet + 1 full attention per
4), with the full embeddings, lm_head, MTP head and vision tower, filled with
random N(0, 0.02) BF16 values, written once. Both tools then quantize the same
Linear weights to W4A16 (symmetric, group 128, min-max RTN) into
compressed-tensors pack-quantized, each in its own process; the figures are
wall time, throughput over the BF16 bytes of the quantized weights, and the
process's peak RSS (`ru_maxrss` of the child). The anchor is llm-compressor's
`oneshot` with a data-free `QuantizationModifier`, which loads the whole model
(it needs a Python with llmcompressor installed; see docs/environment.md for the set).
Finally one weight is compared between the two outputs, packed word for word.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

BUILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mtpforge.testing.replica import write_random_slice
    write_random_slice(Path(sys.argv[1]), {i: i for i in range(int(sys.argv[2]))})
""")


LLMCOMPRESSOR = textwrap.dedent("""
    import sys, torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
    recipe = QuantizationModifier(targets="Linear", scheme="W4A16",
                                  ignore=["lm_head", "re:.*visual.*", "re:.*linear_attn.in_proj_[ab]$", "re:.*mlp.gate$"])
    oneshot(model=model, recipe=recipe, output_dir=sys.argv[2])
""")


MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of `cmd`, measured by a fresh parent that has no other child."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, int(out.stdout.split()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--llmcompressor-python", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base = Path(tmp) / "base"
        subprocess.run([sys.executable, "-c", BUILD, str(base), str(args.layers)], check=True)
        base_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))

        from mtpforge.quant import plan_quantize

        plan = plan_quantize(base, scheme="w4a16")
        n_weights = int(plan.actions[0].split()[1])
        from mtpforge.checkpoint import open_checkpoint

        ckpt = open_checkpoint(base)
        ours_out = Path(tmp) / "mtpforge"
        wall, peak = run([sys.executable, "-m", "mtpforge", "quantize", str(base), "--scheme", "w4a16", "--out", str(ours_out)])
        quantized_bytes = sum(ckpt.tensors[n].nbytes for n in ckpt.tensors
                              if n.rsplit(".", 1)[0] + ".weight_packed" in open_checkpoint(ours_out).tensors)
        result = {"layers": args.layers, "input_gb": round(base_bytes / 1e9, 2), "quantized_weights": n_weights,
                  "quantized_bf16_gb": round(quantized_bytes / 1e9, 2),
                  "mtpforge": {"wall_s": round(wall, 1), "gb_per_s": round(quantized_bytes / 1e9 / wall, 3),
                               "peak_rss_gib": round(peak, 2)}}
        if args.llmcompressor_python:
            theirs_out = Path(tmp) / "llmcompressor"
            wall, peak = run([args.llmcompressor_python, "-c", LLMCOMPRESSOR, str(base), str(theirs_out)])
            result["llmcompressor"] = {"wall_s": round(wall, 1), "gb_per_s": round(quantized_bytes / 1e9 / wall, 3),
                                       "peak_rss_gib": round(peak, 2)}
            result["ratio_wall_mtpforge_over_llmcompressor"] = round(result["mtpforge"]["wall_s"] / wall, 2)
            result["ratio_peak_mtpforge_over_llmcompressor"] = round(result["mtpforge"]["peak_rss_gib"] / peak, 3)
            result["same_packed_words"] = _same(ours_out, theirs_out, "model.language_model.layers.0.mlp.down_proj")
    emit("quantize_27b", result, args.json)


def _same(a: Path, b: Path, module: str) -> bool:
    from mtpforge.checkpoint import open_checkpoint

    words = []
    for path in (a, b):
        ckpt = open_checkpoint(path)
        words.append({k: ckpt.read(ckpt.tensors[f"{module}.{k}"]).tobytes() for k in ("weight_packed", "weight_scale")})
    return words[0] == words[1]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

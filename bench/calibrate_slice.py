"""End-to-end calibrated quantize of a real-width Qwen3.6-27B slice on CPU: peak RSS and time per layer, both runtimes.

    python bench/calibrate_slice.py [--workdir DIR] [--samples 4] [--seq-len 256] [--runtimes streamed,memory]
                                    [--json bench/out/calibrate_slice.json]

The slice: the real Qwen3.6-27B inventory (config, names, shapes, dtypes) with
two decoder layers, real layer 0 (Gated DeltaNet) and real layer 3 (full
attention) renumbered 0 and 1, and everything else at full size: the
248,320-token embeddings and lm_head, the MTP head, the vision tower; random
N(0, 0.02) BF16 values (8.5 GB), written once. Each runtime then runs the
product's own command in a child process,

    mtpforge quantize SLICE --out OUT --method gptq --scheme w4a16-asym --group-size 32 --scope attention-mlp
                     --mtp quantize --mtp-method gptq --samples N --seq-len T --runtime R

(seed 000's scheme and scope, its head calibrated through the quantized trunk),
timed, with the child's peak RSS (`ru_maxrss`) and the per-layer progress lines
it prints. The anchor is the same command with `--runtime memory` in the same
run: its peak is what holding the model costs. The figures per decoder layer
extrapolate to the 64 layers of the real model (memory does not grow with depth
in the streamed runtime: one layer is resident).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")

BUILD = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from mtpforge.testing.replica import reference_inventory
    from mtpforge.testing.factory import write_tokenizer_files
    out = Path(sys.argv[1])
    config, tensors = reference_inventory()
    text = config["text_config"]
    keep = {0: 0, 3: 1}   # real layer -> slice layer: one Gated DeltaNet, one full attention
    text["num_hidden_layers"] = 2
    text["layer_types"] = [text["layer_types"][0], text["layer_types"][3]]
    out.mkdir(parents=True)
    def renamed(n):
        if ".layers." not in n or n.startswith(("mtp.", "model.visual.")):
            return n
        head, rest = n.split(".layers.", 1)
        i, tail = rest.split(".", 1)
        return f"{head}.layers.{keep[int(i)]}.{tail}" if int(i) in keep else None
    g = torch.Generator().manual_seed(0)
    shards, current, size, index = [], {}, 0, {}
    def flush():
        global current, size
        if current:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, out / name, metadata={"format": "pt"})
            shards.append(name); index.update({k: name for k in current}); current, size = {}, 0
    for t in tensors:
        name = renamed(t["name"])
        if name is None:
            continue
        dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[t["dtype"]]
        current[name] = (torch.randn(t["shape"], generator=g) * 0.02).to(dtype)
        size += current[name].numel() * current[name].element_size()
        if size > 2 << 30:
            flush()
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer_files(out, vocab_size=16)
""")


def run(base: Path, out: Path, runtime: str, samples: int, seq_len: int) -> dict[str, object]:
    """The product's command in a child process: wall time, the child's peak RSS, and its per-layer lines."""
    command = [sys.executable, "-m", "mtpforge", "quantize", str(base), "--out", str(out), "--method", "gptq",
               "--scheme", "w4a16-asym", "--group-size", "32", "--scope", "attention-mlp", "--mtp", "quantize",
               "--mtp-method", "gptq",
               "--samples", str(samples), "--seq-len", str(seq_len), "--runtime", runtime]
    start = time.perf_counter()
    # a fresh parent per run, so ru_maxrss of its children is this command's peak alone
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    *_, peak_kib = done.stdout.split()
    lines = [line for line in done.stderr.splitlines() if "calibrated layer" in line or "head" in line]
    return {"runtime": runtime, "wall_s": round(wall, 1), "peak_rss_gib": round(int(peak_kib) / 2**20, 2),
            "progress": lines[-12:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--runtimes", default="streamed,memory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="calibrate-slice-"))
    base = work / "slice"
    if not base.exists():
        subprocess.run([sys.executable, "-c", BUILD, str(base)], check=True)
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    rows = []
    for runtime in args.runtimes.split(","):
        out = work / f"out-{runtime}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        rows.append(run(base, out, runtime, args.samples, args.seq_len))
        print(json.dumps(rows[-1], indent=2), flush=True)
    emit({"bench": "calibrate_slice", "model_gib": round(model_bytes / 2**30, 2), "samples": args.samples,
          "seq_len": args.seq_len, "runs": rows}, args.json)


if __name__ == "__main__":
    main()

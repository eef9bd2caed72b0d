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
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

BUILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mtpforge.testing.replica import write_random_slice
    write_random_slice(Path(sys.argv[1]), {0: 0, 3: 1})  # one Gated DeltaNet, one full attention
""")



def run(base: Path, out: Path, runtime: str, samples: int, seq_len: int, light: bool) -> dict[str, object]:
    """The product's command in a child process: wall time, its peak RSS (wait4's ru_maxrss), and the largest RSS
    sampled every 0.5 s while each of its progress lines was the latest (which phase holds the memory)."""
    command = [sys.executable, "-m", "mtpforge", "quantize", str(base), "--out", str(out), "--method", "gptq",
               "--scheme", "w4a16-asym", "--group-size", "32", "--scope", "attention-mlp", "--mtp", "quantize",
               "--mtp-method", "gptq", "--samples", str(samples), "--seq-len", str(seq_len), "--runtime", runtime]
    if light:  # GPTQ on the trunk's attention and the whole head: every phase, minutes instead of an hour
        command += ["--exclude", r"model\..*mlp\..*"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phases: list[dict[str, object]] = [{"phase": "start", "at_s": 0.0, "max_rss_gib": 0.0}]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss = _rss_gib(child.pid)
            phases[-1]["max_rss_gib"] = max(float(phases[-1]["max_rss_gib"]), rss)  # type: ignore[arg-type]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert child.stderr is not None
    for line in child.stderr:
        if any(key in line for key in PHASES):
            phases.append({"phase": line.strip()[:100], "at_s": round(time.perf_counter() - start, 1), "max_rss_gib": 0.0})
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status})")
    return {"runtime": runtime, "light": light, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "phases": [{**p, "max_rss_gib": round(float(p["max_rss_gib"]), 2)} for p in phases]}  # type: ignore[arg-type]


PHASES = ("weights kept on disk", "trunk:", "calibrated layer", "quantized the smoothed", "head:", "head capture",
          "head GPTQ", "write ", "wrote ")


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--runtimes", default="streamed,memory")
    parser.add_argument("--light", action="store_true", help="no trunk MLP: every phase, quickly")
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
        rows.append(run(base, out, runtime, args.samples, args.seq_len, args.light))
        print(json.dumps(rows[-1]), flush=True)
    emit("calibrate_slice", {"model_gib": round(model_bytes / 2**30, 2), "samples": args.samples, "seq_len": args.seq_len,
                             "runs": rows}, args.json)


if __name__ == "__main__":
    main()

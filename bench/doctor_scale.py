"""How fast `doctor` and `inspect` read the largest public MTP MoE index, against the safetensors library
reading the same headers (the anchor), measured in the same run.

    python bench/doctor_scale.py [--repeat 3] [--json bench/out/doctor_scale.json] [--profile DIR]

Builds a hollow replica of nvidia/Qwen3.5-397B-A17B-NVFP4 (mtpforge/testing/hollow_moe.py: its real
config.json and hf_quant_config.json, per-expert ModelOpt NVFP4 names and packed shapes, 371,447 tensors
in 51 shards, headers only on disk), then times, each as the median of `--repeat` runs in this process:

- anchor: `safetensors.safe_open` on every shard, listing keys and shapes;
- mtpforge `open_checkpoint` (strict validation of every header, the index, the quantization configs);
- `inspect_checkpoint` and `doctor`, each from the directory (so each includes its own open);
- one cold `mtpforge inspect` and `mtpforge doctor` process (interpreter start and imports included).

The budget (issue 13): doctor <= 10 s and inspect <= 5 s on a 400K-tensor, 50-shard index. `--profile DIR`
writes a cProfile of one inspect and one doctor run (from an open checkpoint) to DIR.
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from report import emit  # bench/report.py, beside this script
from safetensors import safe_open

from mtpforge.checkpoint import open_checkpoint
from mtpforge.diagnosis.doctor import doctor
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.testing.hollow_moe import make_hollow_moe, shared_reference

TENSORS = 371_447


def median_sec(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def anchor(path: Path) -> int:
    n = 0
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as f:
            for key in f.keys():
                f.get_slice(key).get_shape()
                n += 1
    return n


def cold(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mtpforge", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="write inspect.prof and doctor.prof here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qwen3.5-397b-a17b-nvfp4"
        start = time.perf_counter()
        make_hollow_moe(path, shared_reference())
        generate = time.perf_counter() - start
        assert anchor(path) == TENSORS
        report = doctor(path)
        assert report.ok and [f.code for f in report.findings] == ["mtp-quantized"], report.findings  # mtp.fc: NVFP4
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            ckpt = open_checkpoint(path)
            cProfile.runctx("inspect_checkpoint(ckpt)", globals(), {"ckpt": ckpt}, str(args.profile / "inspect.prof"))
            ckpt = open_checkpoint(path)
            cProfile.runctx("doctor(ckpt)", globals(), {"ckpt": ckpt}, str(args.profile / "doctor.prof"))
        results = {
            "anchor_safetensors_headers_sec": median_sec(lambda: anchor(path), args.repeat),
            "open_checkpoint_sec": median_sec(lambda: open_checkpoint(path), args.repeat),
            "inspect_sec": median_sec(lambda: inspect_checkpoint(path), args.repeat),
            "doctor_sec": median_sec(lambda: doctor(path), args.repeat),
            "inspect_cold_process_sec": cold("inspect", str(path)),
            "doctor_cold_process_sec": cold("doctor", str(path)),
        }
    base = results["anchor_safetensors_headers_sec"]
    emit("doctor_scale", {
        "checkpoint": f"hollow nvidia/Qwen3.5-397B-A17B-NVFP4: 51 shards, {TENSORS:,} tensors (generated in {generate:.1f} s)",
        "repeat": args.repeat,
        **{k: round(v, 3) for k, v in results.items()},
        "ratios_to_anchor": {k: round(v / base, 2) for k, v in results.items() if k != "anchor_safetensors_headers_sec"},
    }, args.json)


if __name__ == "__main__":
    main()

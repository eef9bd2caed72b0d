"""How fast `doctor` and `inspect` read a 27B checkpoint, against the safetensors
library reading the same headers (the anchor), measured in the same run.

    python bench/doctor_headers.py [--repeat 15] [--json bench/out/doctor_headers.json]

Builds a hollow replica of the real Qwen3.6-27B (15 shards, 1199 tensors,
55.6 GB apparent, a few hundred kB on disk), then times, each as the median of
`--repeat` runs in this process:

- anchor: `safetensors.safe_open` on every shard, listing keys and shapes;
- mtpforge `open_checkpoint` (strict header validation of every shard);
- `inspect_checkpoint` and `doctor` (all checks, including the norm reads);
- one cold `mtpforge doctor` process (interpreter start and imports included).
"""

from __future__ import annotations

import argparse
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
from mtpforge.testing.replica import make_hollow_replica


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_hollow_replica(Path(tmp) / "qwen3.6-27b")
        assert anchor(path) == 1199
        report = doctor(path)
        assert report.findings == (), report.findings
        results = {
            "anchor_safetensors_headers_sec": median_sec(lambda: anchor(path), args.repeat),
            "open_checkpoint_sec": median_sec(lambda: open_checkpoint(path), args.repeat),
            "inspect_sec": median_sec(lambda: inspect_checkpoint(path), args.repeat),
            "doctor_sec": median_sec(lambda: doctor(path), args.repeat),
        }
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mtpforge", "doctor", str(path)], check=True, capture_output=True)
        results["doctor_cold_process_sec"] = time.perf_counter() - start
    base = results["anchor_safetensors_headers_sec"]
    emit("doctor_headers", {
        "checkpoint": "hollow Qwen3.6-27B replica: 15 shards, 1199 tensors, 55.56 GB apparent",
        "repeat": args.repeat,
        **{k: round(v, 4) for k, v in results.items()},
        "ratios_to_anchor": {k: round(v / base, 2) for k, v in results.items() if k != "anchor_safetensors_headers_sec"},
    }, args.json)

if __name__ == "__main__":
    main()

"""graft and strip at full Qwen3.6-27B scale: time against `cp` of the same bytes, and peak memory.

    python bench/graft_strip.py [--workdir DIR] [--json bench/out/graft_strip.json]

On hollow replicas of the real Qwen3.6-27B (55.6 GB apparent), runs as
separate processes, like a user would:

- graft: the 15-tensor head of the base (849 MB) into a head-less finetune;
- strip --vision: drop the 333 vision tensors (921 MB), rewriting only the
  shards that held them.

Each is compared with `cp --sparse=never` of exactly the bytes it wrote (its new
or rewritten shards, then `sync`), run right after it in the same run; figures
are medians of `--repeat` alternating runs. The unchanged ~50 GB are
hard-linked, so a good result is a ratio near 1. Peak RSS is the child's
`ru_maxrss`. Note the asymmetry: the verb reads its source from sparse holes
and fsyncs each file it writes; cp reads a real file from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

from mtpforge.testing.replica import make_hollow_replica


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss * 1024


def cp_anchor(files: list[Path], scratch: Path) -> tuple[float, int]:
    scratch.mkdir()
    os.sync()
    start = time.perf_counter()
    for f in files:
        subprocess.run(["cp", "--sparse=never", str(f), str(scratch / f.name)], check=True)
    os.sync()
    elapsed = time.perf_counter() - start
    size = sum(f.stat().st_size for f in files)
    shutil.rmtree(scratch)
    return elapsed, size


def measure(verb: str, cmd: list[str], out: Path, written: list[str], work: Path, repeat: int) -> dict[str, float]:
    """Median of `repeat` alternating runs of the verb and of the `cp` anchor."""
    runs, anchors, rss = [], [], 0
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        seconds, peak = run([*cmd, "--out", str(out)])
        runs.append(seconds)
        rss = max(rss, peak)
        cp_seconds, nbytes = cp_anchor([out / name for name in written], work / f"cp-{verb}")
        anchors.append(cp_seconds)
    seconds, cp_seconds = statistics.median(runs), statistics.median(anchors)
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(rss / 1e6, 1), "bytes_written": nbytes,
            "cp_same_bytes_seconds": round(cp_seconds, 3), "ratio_to_cp": round(seconds / cp_seconds, 2),
            "write_gb_per_sec": round(nbytes / seconds / 1e9, 2), "repeat": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="mtpforge-bench-"))
    try:
        base = make_hollow_replica(work / "Qwen3.6-27B")
        headless = make_hollow_replica(work / "tmax-27b", drop=("mtp",))
        mtpforge = [sys.executable, "-m", "mtpforge"]
        results = {"graft": measure("graft", [*mtpforge, "graft", str(headless), "--donor", str(base)], work / "grafted",
                                    ["mtp.safetensors"], work, args.repeat)}
        dry = subprocess.run([*mtpforge, "strip", str(base), "--vision", "--out", str(work / "x"), "--dry-run", "--json"],
                             capture_output=True, text=True, check=True)
        rewritten = [w["name"] for w in json.loads(dry.stdout)["written"]]
        results["strip"] = measure("strip", [*mtpforge, "strip", str(base), "--vision"], work / "stripped", rewritten, work,
                                   args.repeat)
        results["strip"]["shards_rewritten"] = len(rewritten)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit("graft_strip", {"checkpoint": "hollow Qwen3.6-27B replicas (55.56 GB apparent, 15 shards)", **results}, args.json)

if __name__ == "__main__":
    main()

"""How much CPU the bench client spends holding many streams open, against the server it loads.

    python bench/loadgen_overhead.py [--streams 500] [--requests 1000] [--output-len 64] [--itl 0.05]

Starts the canned streaming server (mtpforge.testing.streamserver) as its own
process, then runs one `bench` level in this process: `--streams` concurrent
streaming requests, `--requests` in all, each `--output-len` events spaced
`--itl` seconds apart. Reports the client's CPU seconds (this process) and the
server's (from /proc), each as a share of one core over the level's wall time.
The anchor is the server: a trivial asyncio server doing the least work that
produces those streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

from mtpforge.bench.sweep import Level, run_level


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--itl", type=float, default=0.05)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, "-m", "mtpforge.testing.streamserver", "--itl", str(args.itl)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        rng = random.Random(0)
        bodies = [{"model": "canned", "prompt": [rng.randrange(10, 256) for _ in range(32)], "max_tokens": args.output_len}
                  for _ in range(args.requests)]
        server_cpu0, client_cpu0, wall0 = process_cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        summary = asyncio.run(run_level(f"http://127.0.0.1:{port}", Level(args.streams, bodies, timeout=600, max_duration=600)))
        wall = time.perf_counter() - wall0
        client_cpu, server_cpu = time.process_time() - client_cpu0, process_cpu_seconds(server.pid) - server_cpu0
    finally:
        server.terminate()
        server.wait()
    emit("loadgen_overhead", {
        "streams": args.streams, "requests": summary["requests"], "completed": summary["completed"], "failed": summary["failed"],
        "wall_s": round(wall, 2), "output_tokens_per_s": summary["output_tokens_per_s"],
        "client_cpu_s": round(client_cpu, 2), "client_core_share": round(client_cpu / wall, 3),
        "server_cpu_s": round(server_cpu, 2), "server_core_share": round(server_cpu / wall, 3),
        "client_over_server_cpu": round(client_cpu / server_cpu, 2),
        "client_cpu_us_per_token": round(1e6 * client_cpu / max(1, summary["output_tokens"]), 1),
        "itl_p99_s": summary["itl_s"]["p99"] if summary["itl_s"] else None,
    }, args.json)


if __name__ == "__main__":
    main()

"""Every bundled seed recipe, built on the bundled tiny model: what verify measures on each.

    python bench/seed_recipes.py [--json bench/out/seed_recipes.json]

Runs `mtpforge build RECIPE --base tiny-qwen3.5 --out ...` for each recipe in
src/mtpforge/recipes (seed 000 on the head-less finetune, with the base as
donor, as its card did with tmax-27b), and reports per recipe: acceptance per
draft position and mean acceptance length, KLD and top-1 agreement against the
BF16 base, the output's size and the build's wall time. The anchor is the BF16
base itself, verified with the same settings (acceptance of the unquantized head).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit  # bench/report.py, beside this script

from mtpforge.publish.build import bundled_recipes

MODELS = Path(__file__).resolve().parents[1] / "src" / "mtpforge" / "models"


def mtpforge(*args: str) -> dict:  # type: ignore[type-arg]
    r = subprocess.run([sys.executable, "-m", "mtpforge", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(bundled_recipes()):
            if name.startswith("seed-000"):
                base, extra = MODELS / "tiny-qwen3.5-finetune", ["--donor", str(MODELS / "tiny-qwen3.5")]
            else:
                base, extra = MODELS / "tiny-qwen3.5", []
            start = time.perf_counter()
            report = mtpforge("build", name, "--base", str(base), "--out", f"{tmp}/{name}", *extra)
            v = report["verify"]
            rows.append({"recipe": name, "k": v["k"], "acceptance": v["acceptance"]["acceptance_per_position"],
                         "mean_acceptance_length": v["acceptance"]["mean_acceptance_length"],
                         "reference_acceptance": (v["reference_acceptance"] or {}).get("acceptance_per_position"),
                         "kld_mean_nats": v["divergence"]["kl_mean_nats"], "top1": v["divergence"]["top1_agreement"],
                         "bytes": sum(f.stat().st_size for f in Path(f"{tmp}/{name}").glob("*.safetensors")),
                         "build_s": round(time.perf_counter() - start, 1)})
    emit("seed_recipes", {"base_bytes": (MODELS / "tiny-qwen3.5" / "model.safetensors").stat().st_size, "rows": rows}, args.json)


if __name__ == "__main__":
    main()

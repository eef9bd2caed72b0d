"""`mtpforge demo`: the story end to end on checkpoints built on the spot.

Until the bundled tiny trained model exists, the demo builds small fixtures of
the situations the seed cards describe, diagnoses each one, then repairs the
broken ones with the verb that fixes them:

1. a healthy base with its MTP head;
2. a finetune that lost its head but still declares it (tmax-27b) -> `graft` from the base;
3. a W4A16 build whose ignore list forgot the BF16 head -> `doctor --fix`;
4. a vision-language base -> `strip --vision` for a text-only build;
5. a header-exact hollow replica of the real Qwen3.6-27B -> `inspect`, `doctor`, and a full-scale `graft`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from mtpforge.cli.render import render_doctor, render_inspect
from mtpforge.doctor import doctor
from mtpforge.doctor.fix import fix
from mtpforge.graft import graft
from mtpforge.inspection import inspect_checkpoint
from mtpforge.strip import strip
from mtpforge.testing.factory import make_checkpoint
from mtpforge.testing.replica import make_hollow_replica


def run_demo(workdir: str | None = None) -> int:
    """Build, diagnose and repair the demo checkpoints; return 0 when every verdict is as expected."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mtpforge-demo-"))
    surprises = 0
    try:
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        base = make_checkpoint(root / "base", shards=2)
        surprises += _diagnose("base", "a healthy tiny Qwen3.5 base with its MTP head", base, expect_ok=True)

        finetune = make_checkpoint(root / "finetune-no-mtp", mtp=False, vision=False, shards=2, seed=1)
        surprises += _diagnose("finetune-no-mtp", "a finetune that lost its head but still declares it (the tmax-27b case)",
                               finetune, expect_ok=False)
        _step(f"mtpforge graft {finetune.name} --donor base --out finetune-mtp")
        graft(str(finetune), str(base), str(root / "finetune-mtp"))
        surprises += _verdict(root / "finetune-mtp", expect_ok=True)

        w4 = make_checkpoint(root / "w4a16-uncovered", quant="w4a16", seed=2)
        config = json.loads((w4 / "config.json").read_text())
        config["quantization_config"]["ignore"].remove("re:^mtp.*")
        (w4 / "config.json").write_text(json.dumps(config, indent=2))
        surprises += _diagnose("w4a16-uncovered", "a W4A16 build whose ignore list forgot the BF16 head", w4, expect_ok=False)
        _step("mtpforge doctor w4a16-uncovered --fix --out w4a16-fixed")
        fix(str(w4), str(root / "w4a16-fixed"))
        surprises += _verdict(root / "w4a16-fixed", expect_ok=True)

        _step("mtpforge strip base --vision --out base-text")
        strip(str(base), str(root / "base-text"))
        surprises += _verdict(root / "base-text", expect_ok=True)

        replica = make_hollow_replica(root / "Qwen3.6-27B")
        surprises += _diagnose("Qwen3.6-27B", "a header-exact hollow replica of the real Qwen3.6-27B (51.7 GiB of holes)",
                               replica, expect_ok=True)
        headless = make_hollow_replica(root / "tmax-27b", drop=("mtp",))
        _step("mtpforge graft tmax-27b --donor Qwen3.6-27B --out tmax-27b-mtp   (writes the 0.85 GB head, links 50 GB)")
        start = time.perf_counter()
        graft(str(headless), str(replica), str(root / "tmax-27b-mtp"))
        click.echo(f"(graft took {time.perf_counter() - start:.1f} s)")
        surprises += _verdict(root / "tmax-27b-mtp", expect_ok=True)
        click.echo(f"\nevery verdict as expected" if not surprises else f"\n{surprises} unexpected verdict(s)")
        return 0 if not surprises else 1
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _diagnose(name: str, story: str, path: Path, *, expect_ok: bool) -> int:
    click.echo(f"\n=== {name}: {story}")
    click.echo(render_inspect(inspect_checkpoint(path).to_dict()))
    return _verdict(path, expect_ok=expect_ok)


def _step(command: str) -> None:
    click.echo(f"\n$ {command}")


def _verdict(path: Path, *, expect_ok: bool) -> int:
    start = time.perf_counter()
    report = doctor(path)
    click.echo(render_doctor(report) + f"\n(doctor took {(time.perf_counter() - start) * 1000:.0f} ms)")
    return int(report.ok != expect_ok)

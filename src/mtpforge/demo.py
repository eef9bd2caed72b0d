"""`mtpforge demo`: the story end to end on checkpoints built on the spot.

Until the bundled tiny trained model exists, the demo builds small fixtures of
the situations the seed cards describe (a healthy base, a finetune that lost
its head, a W4A16 build whose MTP head is not excluded from quantization, a
modelopt NVFP4 build) and a hollow replica of the real Qwen3.6-27B, then
inspects and diagnoses each one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from mtpforge.cli.render import render_doctor, render_inspect
from mtpforge.doctor import doctor
from mtpforge.inspection import inspect_checkpoint
from mtpforge.testing.factory import make_checkpoint
from mtpforge.testing.replica import make_hollow_replica

STORIES: list[tuple[str, str, Callable[[Path], Path]]] = [
    ("base", "a healthy tiny Qwen3.5 base with its MTP head", lambda p: make_checkpoint(p, shards=2)),
    ("finetune-no-mtp", "a finetune that lost its head but still declares it (the tmax-27b case)",
     lambda p: make_checkpoint(p, mtp=False, vision=False, shards=2)),
    ("w4a16-uncovered", "a W4A16 build whose ignore list forgot the BF16 head", lambda p: _uncovered(p)),
    ("nvfp4-modelopt", "a modelopt NVFP4 text-only build with a BF16 head", lambda p: make_checkpoint(p, quant="modelopt-nvfp4", vision=False)),
    ("qwen3.6-27b-hollow", "a header-exact hollow replica of the real Qwen3.6-27B (51.7 GiB of holes)", make_hollow_replica),
]


def run_demo(workdir: str | None = None) -> int:
    """Build each demo checkpoint, inspect and diagnose it; return 0 when every verdict is as expected."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mtpforge-demo-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        expected_failures = {"finetune-no-mtp", "w4a16-uncovered"}
        surprises = 0
        for name, story, build in STORIES:
            path = root / name
            if path.exists():
                shutil.rmtree(path)
            build(path)
            click.echo(f"\n=== {name}: {story}")
            click.echo(render_inspect(inspect_checkpoint(path).to_dict()))
            start = time.perf_counter()
            report = doctor(path)
            elapsed = time.perf_counter() - start
            click.echo(render_doctor(report))
            click.echo(f"(doctor took {elapsed * 1000:.0f} ms)")
            surprises += report.ok == (name in expected_failures)
        click.echo(f"\n{len(STORIES)} checkpoints diagnosed; {'every verdict as expected' if not surprises else f'{surprises} unexpected verdict(s)'}")
        return 0 if not surprises else 1
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _uncovered(path: Path) -> Path:
    import json

    make_checkpoint(path, quant="w4a16")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["ignore"].remove("re:^mtp.*")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path

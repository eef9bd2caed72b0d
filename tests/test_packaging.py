"""The core install stays light: no torch among its requirements, none imported by the core verbs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path


def test_core_requirements_exclude_torch() -> None:
    core = [r for r in requires("mtpforge") or [] if "extra ==" not in r]
    assert core and not any(r.lower().startswith(("torch", "transformers", "vllm")) for r in core)


def test_inspect_and_doctor_do_not_import_torch(tmp_path: Path) -> None:
    script = f"""
import sys
from pathlib import Path
from mtpforge.testing.factory import make_checkpoint
from mtpforge.cli import main
ckpt = make_checkpoint(Path({str(tmp_path / 'c')!r}), quant='nvfp4', shards=2)
for verb in ('inspect', 'doctor'):
    try:
        main([verb, str(ckpt), '--json'])
    except SystemExit as e:
        assert e.code == 0, e.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'safetensors'))
print('HEAVY', heavy, file=sys.stderr)
assert not heavy, heavy
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

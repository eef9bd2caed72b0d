"""The core install stays light: no torch among its requirements, none imported by the core verbs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path


def test_core_requirements_exclude_torch() -> None:
    core = [r for r in requires("mtpforge") or [] if "extra ==" not in r]
    assert core and not any(r.lower().startswith(("torch", "transformers", "vllm")) for r in core)


def test_the_core_and_engine_side_verbs_do_not_import_torch(tmp_path: Path) -> None:
    script = f"""
import sys
from pathlib import Path
from mtpforge.testing.factory import make_checkpoint
from mtpforge.testing.streamserver import canned_server
from mtpforge.cli import main
ckpt = make_checkpoint(Path({str(tmp_path / 'c')!r}), quant='nvfp4', shards=2)
with canned_server() as (url, _):
    for argv in (['inspect', str(ckpt)], ['doctor', str(ckpt)], ['plan', str(ckpt), '--gpu-memory', '8GiB'], ['serve', str(ckpt)],
                 ['card', str(ckpt)], ['bench', '--url', url, '--concurrency', '1', '--num-requests', '1', '--output-len', '2']):
        try:
            main(argv + ([] if argv[0] == 'card' else ['--json']))
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'safetensors'))
print('HEAVY', heavy, file=sys.stderr)
assert not heavy, heavy
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_verb_is_exported_and_importing_them_stays_torch_free() -> None:
    script = """
import sys, mtpforge
for name in mtpforge.__all__[1:]:
    assert callable(getattr(mtpforge, name)), name
assert {'inspect_checkpoint', 'doctor', 'fix', 'graft', 'strip', 'quantize', 'verify', 'plan', 'launch_line', 'bench', 'card',
        'build'} <= set(mtpforge.__all__)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_verbs_named_like_their_packages_stay_functions_after_the_package_is_imported() -> None:
    script = """
import mtpforge
import mtpforge.verify, mtpforge.bench  # binds the packages on mtpforge, as any import of them does
from mtpforge.verify import VerifyReport
from mtpforge.bench import BenchOptions
import inspect
assert inspect.isfunction(mtpforge.verify) and mtpforge.verify.__module__ == 'mtpforge.verify', mtpforge.verify
assert inspect.isfunction(mtpforge.bench) and mtpforge.bench.__module__ == 'mtpforge.bench', mtpforge.bench
assert VerifyReport.__name__ == 'VerifyReport' and BenchOptions().concurrencies
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

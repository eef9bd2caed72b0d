"""Faults never lose data: a full disk, a kill mid-write, a donor that vanishes
mid-read each leave the input byte-identical and nothing at the destination."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtpforge.diagnosis.doctor import doctor
from mtpforge.errors import MtpforgeError
from mtpforge.surgery.graft import open_donor, plan_graft
from mtpforge.surgery.stage import apply_plan
from mtpforge.testing.replica import make_hollow_replica

from .conftest import CliResult, tmpfs
from .test_graft import snapshot

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


def fingerprint(path: Path) -> dict[str, tuple[int, int, int]]:
    """Size, mtime and inode of every file: cheap enough for 55 GB of sparse shards."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(path.iterdir())}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 kB tmpfs: a disk that fills up."""
    with tmpfs(tmp_path / "small", "size=256k") as mount:
        yield mount


def test_full_disk(make: Make, cli: Cli, small_disk: Path) -> None:
    target = make("target", mtp=False, shards=2)  # ~600 kB: cannot fit in 256 kB
    before = snapshot(target)
    out = small_disk / "out"
    r = cli("graft", str(target), "--donor", str(make("base")), "--out", str(out))
    assert r.code == 3 and "no space left" in r.err and "Traceback" not in r.err
    assert (f"Error: no space left on the device of {small_disk}; nothing was written to {out}\n"
            "hint: free space or choose another --out; the input is untouched\n") in r.err
    assert snapshot(target) == before
    assert list(small_disk.iterdir()) == []  # neither the output nor its staging directory


@pytest.mark.parametrize("how", ["vanishes", "shrinks"])
def test_donor_that_changes_mid_read(tmp_path: Path, make: Make, how: str) -> None:
    donor, target = make("donor", shards=2), make("target", mtp=False)
    before = snapshot(target)
    plan = plan_graft(target, open_donor(str(donor)))
    head_shard = donor / "model-00002-of-00002.safetensors"
    if how == "vanishes":
        head_shard.unlink()
    else:
        head_shard.write_bytes(head_shard.read_bytes()[:1000])
    with pytest.raises(MtpforgeError, match=r"disappeared|shrank|early") as e:
        apply_plan(plan, tmp_path / "out")
    why = "disappeared while being read" if how == "vanishes" else "the file shrank to 1000 bytes while being read"
    assert str(e.value).startswith(f"{head_shard}: {why}") and "run again" in (e.value.hint or ""), (str(e.value), e.value.hint)
    assert snapshot(target) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_in_the_middle_of_a_27b_graft(tmp_path: Path, sig: signal.Signals) -> None:
    donor = make_hollow_replica(tmp_path / "Qwen3.6-27B")
    target = make_hollow_replica(tmp_path / "tmax-27b", drop=("mtp",))
    before = fingerprint(target)
    out, staging = tmp_path / "out", tmp_path / ".out.partial"
    cmd = [sys.executable, "-m", "mtpforge", "graft", str(target), "--donor", str(donor), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    head = staging / "mtp.safetensors"
    deadline = time.monotonic() + 60
    while not (head.exists() and head.stat().st_size > 50 << 20):  # caught mid-way through 0.85 GB
        assert proc.poll() is None, f"graft finished before it could be interrupted: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert fingerprint(target) == before
    if sig == signal.SIGTERM:
        assert not staging.exists()  # cleaned up on the way out
    # a rerun clears whatever a SIGKILL left, and succeeds
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not staging.exists() and doctor(out).findings == ()
    assert os.path.getsize(out / "mtp.safetensors") > 849_000_000

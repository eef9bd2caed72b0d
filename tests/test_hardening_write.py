"""The write side of every verb cannot touch an input: option-made names, overlapping outputs, racing runs,
--overwrite, stale staging, invalid outputs and OS errors each end in a clean error (or a correct output) with
every input byte-identical and nothing half-written at OUT."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.errors import MtpforgeError, UsageError
from mtpforge.surgery.graft import open_donor, plan_graft
from mtpforge.surgery.stage import apply_plan
from mtpforge.surgery.writeplan import NewShard, WritePlan

from .conftest import CliResult, fingerprint, leftovers

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


# 1. --shard-name: a plain .safetensors name, never a write through a link


@pytest.mark.parametrize("name", ["./model.safetensors", "../x.safetensors", "/tmp/x.safetensors", "sub/x.safetensors",
                                  ".hidden.safetensors", "..", "mtp.bin", ""])
def test_shard_name_must_be_a_plain_file_name(tmp_path: Path, pair: tuple[Path, Path], cli: Cli, name: str) -> None:
    target, base = pair
    before, around = fingerprint(target, base), sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out), "--shard-name", name)
    assert r.code == 2, r.err
    reason = "does not end in .safetensors" if name in ("mtp.bin",) else "is not a plain file name"
    assert f"Error: --shard-name {name!r} {reason}" in r.err and "Traceback" not in r.err
    assert fingerprint(target, base) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == around  # nothing written anywhere, OUT included


def test_shard_name_of_a_linked_shard_is_refused(tmp_path: Path, pair: tuple[Path, Path], cli: Cli) -> None:
    target, base = pair
    before = fingerprint(target, base)
    r = cli("graft", str(target), "--donor", str(base), "--out", str(tmp_path / "out"), "--shard-name", "model.safetensors")
    assert r.code == 3 and f"{target / 'model.safetensors'} already exists and is kept" in r.err, r.err
    assert fingerprint(target, base) == before
    assert leftovers(tmp_path, tmp_path / "out") == []


def test_a_plan_that_writes_a_linked_name_is_refused_before_writing(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    target, base = pair
    good = plan_graft(target, open_donor(str(base)))
    clash = WritePlan("graft", good.source_dir, good.linked, (NewShard("model.safetensors", good.written[0].tensors),),
                      good.json_files, good.linked_bytes, good.actions)
    before = fingerprint(target, base)
    with pytest.raises(UsageError, match=r"the graft plan writes model\.safetensors twice"):
        apply_plan(clash, tmp_path / "out")
    assert fingerprint(target, base) == before and leftovers(tmp_path, tmp_path / "out") == []


def test_new_files_are_fresh_inodes(tmp_path: Path, pair: tuple[Path, Path], cli: Cli) -> None:
    target, base = pair
    out = tmp_path / "out"
    assert cli("graft", str(target), "--donor", str(base), "--out", str(out)).code == 0
    inputs = {p.stat().st_ino for p in [*target.iterdir(), *base.iterdir()]}
    for name in ("mtp.safetensors", "config.json", "model.safetensors.index.json"):
        assert (out / name).stat().st_ino not in inputs and (out / name).stat().st_nlink == 1
    assert leftovers(tmp_path, out) == ["out"]  # no lock file, no staging


# 2. OUT against every input


@pytest.mark.parametrize("where", ["donor", "inside-donor", "above-both", "inside-target"])
def test_out_must_not_overlap_any_input(tmp_path: Path, pair: tuple[Path, Path], cli: Cli, where: str) -> None:
    target, base = pair
    out = {"donor": base, "inside-donor": base / "sub", "above-both": tmp_path, "inside-target": target / "sub"}[where]
    before = fingerprint(target, base)
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out), "--overwrite")
    assert r.code == 2 and f"Error: --out {out} overlaps the input " in r.err, r.err
    assert "inputs are never modified" in r.err
    assert fingerprint(target, base) == before
    assert not (base / "sub").exists() and not (target / "sub").exists()


def test_apply_plan_checks_every_directory_the_plan_reads(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    target, base = pair
    plan = plan_graft(target, open_donor(str(base)))  # graft's own check skipped: the plan's sources still count
    before = fingerprint(target, base)
    with pytest.raises(UsageError, match=f"overlaps the input {base}"):
        apply_plan(plan, base / "sub")
    with pytest.raises(UsageError, match="overlaps the input"):
        apply_plan(plan, base, overwrite=True)
    assert fingerprint(target, base) == before and not (base / "sub").exists()


# 6. The staged output is validated before it is published


def test_strip_never_publishes_an_output_whose_config_is_invalid(tmp_path: Path, make: Make, cli: Cli) -> None:
    ckpt = make("vl")
    config = json.loads((ckpt / "config.json").read_text())
    config["vision_config"]["depth"] = "x"
    (ckpt / "config.json").write_text(json.dumps(config))
    before = fingerprint(ckpt)
    out = tmp_path / "out"
    r = cli("strip", str(ckpt), "--vision", "--out", str(out))
    assert r.code == 3 and "Traceback" not in r.err, r.err
    assert fingerprint(ckpt) == before and leftovers(tmp_path, out) == []


def test_apply_plan_validates_every_verb_s_output(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    target, base = pair
    good = plan_graft(target, open_donor(str(base)))
    bad = WritePlan("graft", good.source_dir, good.linked, good.written,
                    {**good.json_files, "config.json": {"model_type": "no-such-family"}}, good.linked_bytes, good.actions)
    before = fingerprint(target, base)
    out = tmp_path / "out"
    with pytest.raises(MtpforgeError, match=f"the graft output would not be usable, so nothing was written to {out}"):
        apply_plan(bad, out)
    assert fingerprint(target, base) == before and leftovers(tmp_path, out) == []


@pytest.mark.parametrize("kind", ["symlink-out", "fifo"])
def test_a_linked_file_must_be_a_regular_file_inside_the_input(tmp_path: Path, pair: tuple[Path, Path], kind: str) -> None:
    target, base = pair
    good = plan_graft(target, open_donor(str(base)))
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    if kind == "fifo":
        os.mkfifo(target / "odd.json")
    else:
        os.symlink(secret, target / "odd.json")
    plan = WritePlan("graft", good.source_dir, (*good.linked, "odd.json"), good.written, good.json_files,
                     good.linked_bytes, good.actions)
    before = fingerprint(target, base)
    out = tmp_path / "out"
    with pytest.raises(MtpforgeError, match="input file 'odd.json', " + ("a symlink that leaves" if kind != "fifo"
                                                                          else r"not a regular file \(a FIFO")):
        apply_plan(plan, out)
    assert fingerprint(target, base) == before and leftovers(tmp_path, out) == [] and secret.read_text() == "outside"


def test_a_source_shard_swapped_for_a_fifo_after_planning_is_an_error_not_a_hang(make: Make, tmp_path: Path) -> None:
    base, target = make("base"), make("target", mtp=False)
    plan = plan_graft(target, open_donor(str(base)))
    donor_shard = next(s for s in base.glob("*.safetensors"))
    donor_shard.unlink()
    os.mkfifo(donor_shard)  # a reader that opened it blocking would wait for a writer forever
    def hung(*_: object) -> None:
        raise TimeoutError("apply_plan blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(MtpforgeError, match="not a regular file"):
            apply_plan(plan, tmp_path / "out")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (tmp_path / "out").exists()

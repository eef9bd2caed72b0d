"""The write side of every verb cannot touch an input: option-made names, overlapping outputs, racing runs,
--overwrite, stale staging, invalid outputs and OS errors each end in a clean error (or a correct output) with
every input byte-identical and nothing half-written at OUT."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtpforge.diagnosis.doctor import doctor
from mtpforge.errors import MtpforgeError, UsageError
from mtpforge.surgery import publish as publish_mod
from mtpforge.surgery.graft import open_donor, plan_graft
from mtpforge.surgery.stage import apply_plan
from mtpforge.surgery.writeplan import NewShard, WritePlan

from .conftest import CliResult, tmpfs

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


def fingerprint(*dirs: Path) -> dict[str, tuple[int, str, int, int]]:
    """Size, content hash, inode and mtime of every file under `dirs` (not following links)."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p)] = (st.st_size, digest, st.st_ino, st.st_mtime_ns)
    return out


def leftovers(parent: Path, out: Path) -> list[str]:
    """Anything this run may have left beside or at OUT: the output, its staging, lock or temporary names."""
    return sorted(p.name for p in parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


@pytest.fixture
def pair(make: Make) -> tuple[Path, Path]:
    return make("target", mtp=False), make("base")


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


# 3. One lock per OUT


def test_a_second_run_on_the_same_out_is_refused(tmp_path: Path, pair: tuple[Path, Path], cli: Cli) -> None:
    target, base = pair
    out = tmp_path / "out"
    before = fingerprint(target, base)
    lock = tmp_path / ".out.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running mtpforge holds it
    try:
        r = cli("graft", str(target), "--donor", str(base), "--out", str(out))
    finally:
        os.close(fd)
    assert r.code == 3 and f"Error: another mtpforge run is writing {out}" in r.err, r.err
    assert "the input is untouched" in r.err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()
    assert cli("graft", str(target), "--donor", str(base), "--out", str(out)).code == 0  # a stale lock file never blocks
    assert fingerprint(target, base) == before and leftovers(tmp_path, out) == ["out"]


# 4. One atomic replace


def test_overwrite_is_atomic_and_spares_unrelated_paths(tmp_path: Path, pair: tuple[Path, Path], cli: Cli,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if publish_mod._libc_renameat2() is None:
        pytest.skip("no renameat2 in this libc")
    target, base = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-file").write_text("old")
    user = tmp_path / ".out.old"  # a user's directory that happens to have the old fixed name
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    before = fingerprint(target, base, user)

    def killed(path: Path) -> None:  # the process dies right after the exchange
        raise KeyboardInterrupt

    monkeypatch.setattr(publish_mod, "_discard", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan_graft(target, open_donor(str(base))), out, overwrite=True)
    assert (out / "mtp.safetensors").is_file() and not (out / "old-file").exists()  # OUT was never absent
    monkeypatch.undo()
    assert cli("graft", str(target), "--donor", str(base), "--out", str(out), "--overwrite").code == 0
    assert doctor(out).findings == ()
    assert fingerprint(target, base, user) == before
    assert leftovers(tmp_path, out) == [".out.old", "out"]


def test_overwrite_fallback_without_renameat2(tmp_path: Path, pair: tuple[Path, Path], cli: Cli,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target, base = pair
    out, user = tmp_path / "out", tmp_path / ".out.old"
    out.mkdir()
    (out / "old-file").write_text("old")
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    before = fingerprint(target, base, user)
    monkeypatch.setattr(publish_mod, "_renameat2", lambda src, dst, flags: False)
    assert cli("graft", str(target), "--donor", str(base), "--out", str(out), "--overwrite").code == 0
    assert (out / "mtp.safetensors").is_file() and not (out / "old-file").exists()
    assert fingerprint(target, base, user) == before and leftovers(tmp_path, out) == [".out.old", "out"]


# 5. Staging hygiene


@pytest.mark.parametrize("stale", ["file", "symlink-to-dir", "dangling-symlink", "directory"])
def test_a_stale_staging_path_is_removed_without_following_links(tmp_path: Path, pair: tuple[Path, Path], cli: Cli,
                                                                 stale: str) -> None:
    target, base = pair
    staging, victim = tmp_path / ".out.partial", tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not delete")
    if stale == "file":
        staging.write_text("junk")
    elif stale == "directory":
        staging.mkdir()
        (staging / "half.safetensors").write_bytes(b"\0" * 10)
        os.symlink(victim, staging / "link")
    else:
        os.symlink(victim if stale == "symlink-to-dir" else tmp_path / "nowhere", staging)
    before = fingerprint(target, base, victim)
    r = cli("graft", str(target), "--donor", str(base), "--out", str(tmp_path / "out"))
    assert r.code == 0, r.err
    assert fingerprint(target, base, victim) == before
    assert leftovers(tmp_path, tmp_path / "out") == ["out"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root ignores permission bits, so the file system itself must refuse)."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount


def test_a_read_only_output_parent_is_a_clean_error(pair: tuple[Path, Path], cli: Cli, read_only_dir: Path) -> None:
    target, base = pair
    before = fingerprint(target, base)
    out = read_only_dir / "out"
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out))
    assert r.code == 3 and "Traceback" not in r.err, r.err
    assert f"Error: writing {out} failed: Read-only file system ({read_only_dir / '.out.lock'}); nothing was written" in r.err
    assert "hint: the input is untouched" in r.err
    assert fingerprint(target, base) == before and list(read_only_dir.iterdir()) == []


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


# 7. Every OSError of the write path is an exit-3 error naming the path


def test_a_file_in_the_way_of_the_output_parent(tmp_path: Path, pair: tuple[Path, Path], cli: Cli) -> None:
    target, base = pair
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    before = fingerprint(target, base)
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out))
    assert r.code == 3 and f"Error: writing {out} failed: " in r.err and "Traceback" not in r.err, r.err
    assert "nothing was written" in r.err and "hint: the input is untouched" in r.err
    assert fingerprint(target, base) == before and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EEXIST, errno.EIO])
def test_an_oserror_mid_stage_is_exit_3(tmp_path: Path, pair: tuple[Path, Path], cli: Cli,
                                        monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    target, base = pair
    out = tmp_path / "out"
    before = fingerprint(target, base)

    def failing_link(src: object, dst: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err), str(dst))

    monkeypatch.setattr(os, "link", failing_link)
    r = cli("graft", str(target), "--donor", str(base), "--out", str(out))
    assert r.code == 3 and "Traceback" not in r.err, r.err
    if err == errno.ENOSPC:
        assert f"Error: no space left on the device of {tmp_path}; nothing was written to {out}" in r.err
    else:
        assert f"Error: writing {out} failed: {os.strerror(err)} ({tmp_path / '.out.partial'}/" in r.err
    assert "the input is untouched" in r.err
    assert fingerprint(target, base) == before and leftovers(tmp_path, out) == []


def test_two_runs_race_for_the_same_out(tmp_path: Path, pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    target, base = pair
    out = tmp_path / "out"
    plan = plan_graft(target, open_donor(str(base)))
    before = fingerprint(target, base)
    staged, go = threading.Event(), threading.Event()
    real = publish_mod.publish

    def slow_publish(staging: Path, dst: Path, *, overwrite: bool) -> None:
        staged.set()
        go.wait(10)
        real(staging, dst, overwrite=overwrite)

    monkeypatch.setattr("mtpforge.surgery.stage.publish", slow_publish)
    first = threading.Thread(target=apply_plan, args=(plan, out))
    first.start()
    assert staged.wait(10)
    with pytest.raises(MtpforgeError, match=f"another mtpforge run is writing {out}"):
        apply_plan(plan, out, overwrite=True)
    go.set()
    first.join(10)
    assert doctor(out).findings == () and fingerprint(target, base) == before and leftovers(tmp_path, out) == ["out"]


def test_publish_dir_never_replaces(tmp_path: Path) -> None:
    staged, out = tmp_path / "work" / "done", tmp_path / "out"
    staged.mkdir(parents=True)
    (staged / "f").write_text("new")
    out.mkdir()  # an empty directory: rename(2) alone would silently replace it
    with pytest.raises(UsageError, match="already exists"):
        publish_mod.publish_dir(staged, out)
    assert (staged / "f").exists() and list(out.iterdir()) == []
    out.rmdir()
    publish_mod.publish_dir(staged, out)
    assert (out / "f").read_text() == "new" and leftovers(tmp_path, out) == ["out"]


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

"""The publish path under stress: one lock per OUT, an atomic --overwrite, stale staging, read-only parents and
OS errors mid-stage each end in a clean error (or a correct output) with every input byte-identical and nothing
half-written at OUT. test_hardening_write.py covers names, overlap, validation and linked inputs."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtpforge.diagnosis.doctor import doctor
from mtpforge.errors import MtpforgeError, UsageError
from mtpforge.surgery import publish as publish_mod
from mtpforge.surgery.graft import open_donor, plan_graft
from mtpforge.surgery.stage import apply_plan

from .conftest import CliResult, fingerprint, leftovers, tmpfs

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


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

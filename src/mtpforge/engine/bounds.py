"""The allowed range of every numeric option of plan, serve, bench and card, declared once.

The CLI builds its click types from these (`cli/options.py`), and `PlanRequest`,
`ServeOptions` and `BenchOptions` check the same ranges in `__post_init__`, so
the Python API refuses exactly what the command line refuses, with a
`UsageError` (exit 2) naming the flag and the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtpforge.errors import UsageError


@dataclass(frozen=True)
class Range:
    """low <= x <= high (low < x with `low_open`); None: unbounded on that side. Floats must be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = True

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is None:
            return kind if self.high is None else f"{kind} <= {_num(self.high)}"
        if self.high is None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.integer and not self.low_open:
            return f"{kind} from {_num(self.low)} to {_num(self.high)}"
        return f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(1)
COUNT = Range(0)
PORT = Range(1, 65535)
FRACTION = Range(0, 1, low_open=True, integer=False)  # --util: vLLM's --gpu-memory-utilization
SECONDS = Range(0, None, low_open=True, integer=False)
CONCURRENCY = Range(1, 4096)
REQUESTS = Range(1, 100_000)
BYTES = Range(0)


def check(flag: str, value: float | None, allowed: Range) -> None:
    """Refuse `value` (None passes: the option was not given) outside `allowed`, naming `flag`."""
    if value is not None and not allowed.contains(value):
        raise UsageError(f"{flag} {value!r} is out of range: it must be {allowed.describe()}",
                         hint=f"see mtpforge --help for {flag}")

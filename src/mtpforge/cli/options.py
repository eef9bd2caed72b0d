"""Click types for the numeric options, built once from the ranges in `engine/bounds.py`.

`click.IntRange` / `click.FloatRange` (never clamping) refuse a value outside its
range with exit 2 and a message naming the flag and the range; floats must also
be finite (`nan` and `inf` pass click's own comparisons). The library's option
classes check the same `Range`s, so the CLI and the Python API agree.
"""

from __future__ import annotations

import math
from typing import Any

import click

from mtpforge.engine import bounds
from mtpforge.engine.bounds import Range


class _FiniteFloatRange(click.FloatRange):
    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


def click_type(allowed: Range) -> click.ParamType:
    """The click type that accepts exactly `allowed`."""
    if allowed.integer:
        low = None if allowed.low is None else int(allowed.low) + (1 if allowed.low_open else 0)
        return click.IntRange(min=low, max=None if allowed.high is None else int(allowed.high), clamp=False)
    return _FiniteFloatRange(min=allowed.low, max=allowed.high, min_open=allowed.low_open, clamp=False)


class IntList(click.ParamType):
    """Comma-separated integers, each within `allowed` (bench --concurrency)."""

    name = "list"

    def __init__(self, allowed: Range) -> None:
        self.allowed = allowed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers (e.g. 1,4,16).", param, ctx)
        bad = [v for v in items if not self.allowed.contains(v)]
        if bad:
            self.fail(f"{bad[0]} is out of range: each level must be {self.allowed.describe()}.", param, ctx)
        return items


POSITIVE = click_type(bounds.POSITIVE)
COUNT = click_type(bounds.COUNT)
PORT = click_type(bounds.PORT)
FRACTION = click_type(bounds.FRACTION)
SECONDS = click_type(bounds.SECONDS)
REQUESTS = click_type(bounds.REQUESTS)
CONCURRENCY_LIST = IntList(bounds.CONCURRENCY)
NON_NEGATIVE_FLOAT = click_type(Range(0, integer=False))
UNIT_INTERVAL = click_type(Range(0, 1, integer=False))  # acceptance floors

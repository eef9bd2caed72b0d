"""Byte sizes as people write them ("46GiB", "96GB", "512M") and as we print them."""

from __future__ import annotations

import re

from mtpforge.errors import UsageError

GIB = 1 << 30
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
          "g": 10**9, "gb": 10**9, "gib": GIB, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str, *, option: str) -> int:
    """Bytes in `text`: decimal units (GB) are powers of 1000, binary ones (GiB) of 1024.

    Raises:
        UsageError: `text` is not a size; `option` names the flag in the message.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(f"{option} {text!r} is not a size", hint=f"write it like {option} 46GiB or {option} 48GB")
    return int(float(match.group(1)) * _UNITS[unit])


def gib(n: float) -> str:
    """`n` bytes in GiB with two decimals (MiB below a tenth of a GiB)."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def human(n: float) -> str:
    """Bytes as a short figure in decimal units (GB = 10^9, as model cards quote them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"

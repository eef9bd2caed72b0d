"""A one-line progress report on stderr for long writes (a 27B quantize takes minutes).

Only on a terminal: logs and captured output stay clean. At most a few
updates a second; the line is cleared when the work is done.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, every_sec: float = 0.25) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.every_sec = every_sec

    def advance(self, nbytes: int, what: str = "") -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_sec:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9) / 1e6
            left = (self.total - self.done) / (rate * 1e6) if rate > 0 else 0
            line = f"{self.label}: {self.done / 1e9:.2f} / {self.total / 1e9:.2f} GB ({100 * self.done / self.total:.0f} %), " \
                   f"{rate:.0f} MB/s, {left:.0f} s left  {what}"
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()

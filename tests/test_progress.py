"""The progress line: shown on a terminal, never in captured output."""

from __future__ import annotations

import io

from mtpforge.surgery.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_reports_bytes_rate_and_clears_on_a_terminal() -> None:
    out = Tty()
    p = Progress("quantize -> q", 4_000_000_000, stream=out, every_sec=0)
    p.advance(1_000_000_000, "model.layers.0.mlp.up_proj.weight")
    assert "1.00 / 4.00 GB (25 %)" in out.getvalue() and "up_proj" in out.getvalue()
    p.close()
    assert out.getvalue().endswith("\r")


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress("quantize -> q", 10, stream=out, every_sec=0)
    p.advance(5)
    p.close()
    assert out.getvalue() == ""

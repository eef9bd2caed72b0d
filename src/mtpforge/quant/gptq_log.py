"""`quant_log.csv`: GPTQ's loss and time per module, as seed 004's card ships one ("per-module quantization losses +
timings").

llm-compressor measures both for each module it solves (`utils/metric_logging.py::CompressionLogger`, which only
logs them: `GPTQ | METRIC - error ...`). While a run lasts, its exit is wrapped to keep them, and
`GPTQModifier.compress_module_list` to learn the modules' names. Layers a resumed run read back (`quant.resume`) are
not solved again, so they have no row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterator
from typing import Any

HEADER = ("module", "loss", "seconds")


@contextlib.contextmanager
def recorded() -> Iterator[list[tuple[str, float, float]]]:
    """Within the block, every module llm-compressor's GPTQ solves appends (module, loss, seconds) to the list yielded."""
    from mtpforge.quant.calibrated import _import_llmcompressor

    _import_llmcompressor()  # first, with its log kept off stdout (`--json` owns it)
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.utils.metric_logging import CompressionLogger

    rows: list[tuple[str, float, float]] = []
    names: dict[int, str] = {}
    compress, exit_ = GPTQModifier.compress_module_list, CompressionLogger.__exit__

    def compress_module_list(self: Any, module_list: Any) -> Any:
        names.update({id(m): n for m, n in self._module_names.items()})
        return compress(self, module_list)

    def logged_exit(self: Any, *exc: Any) -> Any:
        if self._loss is not None and id(self.module) in names:
            rows.append((names[id(self.module)], float(self._loss), time.time() - self.start_tick))
        return exit_(self, *exc)

    GPTQModifier.compress_module_list = compress_module_list
    CompressionLogger.__exit__ = logged_exit
    try:
        yield rows
    finally:
        GPTQModifier.compress_module_list = compress
        CompressionLogger.__exit__ = exit_


def as_csv(rows: list[tuple[str, float, float]]) -> str:
    """The rows in module order (llm-compressor logs a batch's modules in reverse)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for module, loss, seconds in sorted(rows, key=lambda r: _natural(r[0])):
        writer.writerow((module, f"{loss:.6g}", f"{seconds:.3f}"))
    return out.getvalue()


def _natural(name: str) -> list[Any]:
    import re

    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]

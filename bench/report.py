"""What every benchmark prints: one JSON document naming the command and the machine."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def emit(benchmark: str, results: dict[str, Any], out: Path | None) -> None:
    """Print the result document (and write it to `out` if given)."""
    doc = {"benchmark": benchmark, "command": f"python bench/{benchmark}.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}", **results}
    print(json.dumps(doc, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2))

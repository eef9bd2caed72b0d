"""The PNG a person looks at: throughput, TTFT and TPOT against concurrency, one line per server."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def chart_missing() -> str | None:
    """Why the chart cannot be drawn here (matplotlib comes with the torch extra, not the core install), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "the chart needs matplotlib: pip install 'mtpforge[torch]' (or pip install matplotlib)"
    return None


def plot(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    panels = [("output_tokens_per_s", None, "output tok/s"), ("ttft_s", "p50", "TTFT p50 (s)"),
              ("tpot_s", "p50", "TPOT p50 (ms)")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=110)
    for ax, (key, stat, label) in zip(axes, panels, strict=True):
        for run in doc["runs"]:
            xs, ys = [], []
            for level in run["levels"]:
                value = level[key] if stat is None else (level[key] or {}).get(stat)
                if value is not None:
                    xs.append(level["concurrency"])
                    ys.append(value * 1000 if key == "tpot_s" else value)
            ax.plot(xs, ys, marker="o", label=run["url"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

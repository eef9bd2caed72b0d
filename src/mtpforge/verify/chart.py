"""The PNG chart of acceptance by draft position (candidate vs reference) that model cards embed."""

from __future__ import annotations

from pathlib import Path


def acceptance_chart(path: Path, series: dict[str, list[float]], title: str,
                     intervals: dict[str, list[list[float]]] | None = None) -> Path:
    """Grouped bars: one group per draft position, one bar per series (e.g. candidate, reference, vLLM).

    `intervals`, per series, the [low, high] 95 % interval of each rate: drawn as error bars.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    k = max(len(v) for v in series.values())
    width = 0.8 / len(series)
    for i, (label, rates) in enumerate(series.items()):
        xs = [p + (i - (len(series) - 1) / 2) * width for p in range(len(rates))]
        bounds = (intervals or {}).get(label)
        yerr = None if not bounds else [[100 * (r - lo) for r, (lo, _) in zip(rates, bounds, strict=True)],
                                        [100 * (hi - r) for r, (_, hi) in zip(rates, bounds, strict=True)]]
        bars = ax.bar(xs, [100 * r for r in rates], width, label=label, yerr=yerr, capsize=3, error_kw={"linewidth": 0.8})
        ax.bar_label(bars, labels=[f"{100 * r:.0f}%" for r in rates], fontsize=8, padding=2)
    ax.set_xticks(range(k), [f"draft {p + 1}" for p in range(k)])
    ax.set_ylabel("acceptance (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

"""How report sections draw: text safe for a markdown table cell, grouped bar charts (probes, tags, judge) and
histograms of scores in [0, 1] (completion, diversity, memorization)."""

from __future__ import annotations

import math
from pathlib import Path


def cell(text: str, limit: int = 0) -> str:
    """Text made safe for one markdown table cell (pipes escaped, line breaks shown as ⏎), cut to `limit`."""
    text = " ".join(text.replace("|", "\\|").replace("\n", " ⏎ ").split())
    return text if not limit or len(text) <= limit else text[:limit - 1] + "…"


def bar_chart(path: Path, labels: list[str], series: dict[str, list[float | None]], ylabel: str, title: str,
              errors: dict[str, list[tuple[float, float]]] | None = None, ylim: tuple[float, float] | None = None,
              notes: list[str] | None = None) -> None:
    """Grouped bars, one group per label and one colour per series; None bars are absent and `notes` (one per
    label) are written above the group instead; `errors` are (low, high) interval ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * max(1, len(series)) ** 0.5 + 2), 4))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        shown = [(x, v, i) for i, (x, v) in enumerate(zip(xs, values)) if v is not None]
        if not shown:
            continue
        yerr = None
        if errors and name in errors:
            yerr = [[max(0.0, v - errors[name][i][0]) for _, v, i in shown],  # max: rounding at p = 0 or 1
                    [max(0.0, errors[name][i][1] - v) for _, v, i in shown]]
        ax.bar([x for x, _, _ in shown], [v for _, v, _ in shown], width, label=name, yerr=yerr, capsize=3)
    for i, note in enumerate(notes or []):
        if note:
            low, high = ylim or (0, 1)
            ax.text(i, low + 0.03 * (high - low), note, ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_histogram(values: list[float], xlabel: str, title: str, path: Path, bins: int = 20,
                   ylabel: str = "texts") -> None:
    """A histogram of scores in [0, 1] with their mean, as a PNG (own Agg canvas: no display, no pyplot state); NaN
    scores are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = [v for v in values if not math.isnan(v)]
    ax.hist(finite, bins=bins, range=(0.0, 1.0), color="#4c72b0", edgecolor="white")
    if finite:
        mean = sum(finite) / len(finite)
        ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.3f}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)

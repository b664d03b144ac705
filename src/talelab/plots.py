"""Every chart talelab draws, as PNG files: training curves, evaluation bars and histograms, sweep and trial
comparisons, corpus statistics and attention heat maps. Callers hand over plain numbers and a path; what the numbers
mean and which file they go to stays with the stage that computed them.

Each figure has its own Agg canvas (no display, no pyplot state), so charts can be drawn from any thread.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BLUE, GREY, RED = "#4c72b0", "#999999", "#c44e52"
LENGTH_BINS = 50


def canvas_figure(width: float, height: float, dpi: float = 100) -> Figure:
    """A figure on its own Agg canvas: the one place a backend is chosen."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path, dpi: float = 100) -> None:
    """The figure as a PNG at `path`, laid out so that no label is cut off."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def loss_chart(records: list[dict], path: Path, held_out: str, held_out_label: str, title: str = "",
               bits_per_byte: bool = False) -> None:
    """Training loss (records with "loss") and held-out loss (records with `held_out`) against the optimizer step,
    as a PNG; with `bits_per_byte`, a second panel of validation bits per byte ("val_bpb") against training minutes
    ("elapsed_s"): what a budget of minutes buys, comparable across tokenizers."""
    fig = canvas_figure(11 if bits_per_byte else 6, 4)
    ax = fig.add_subplot(1, 2 if bits_per_byte else 1, 1)
    train = [r for r in records if "loss" in r]
    held = [r for r in records if held_out in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", lw=1)
    if held:
        ax.plot([r["step"] for r in held], [r[held_out] for r in held], "o-", label=held_out_label, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    if bits_per_byte:
        clock = fig.add_subplot(1, 2, 2)
        clock.plot([r["elapsed_s"] / 60 for r in held], [r["val_bpb"] for r in held], "o-", color="C1", ms=3)
        clock.set_xlabel("training time (minutes)")
        clock.set_ylabel("validation bits per byte")
        clock.grid(alpha=0.3)
    save(fig, path, dpi=120)


def learning_rate_chart(records: list[dict], path: Path, key: str = "learning_rate", title: str = "") -> None:
    """The learning rate (records with `key`) against the optimizer step, as a PNG: the warm-up and decay a schedule
    gave, read from what the run logged rather than from its settings."""
    fig = canvas_figure(6, 4)
    ax = fig.add_subplot()
    logged = [r for r in records if key in r]
    ax.plot([r["step"] for r in logged], [r[key] for r in logged], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    save(fig, path, dpi=120)


def validation_loss_curves(curves: dict[str, tuple[list[float], list[float]]], path: Path, xlabel: str,
                           ylabel: str = "validation loss (nats/token)") -> None:
    """Validation loss (or another loss, named by `ylabel`) of several runs, one line each ({run: (x, loss)}),
    against a shared x (tokens or time)."""
    fig = canvas_figure(7, 4.2, dpi=120)
    ax = fig.add_subplot()
    for name, (x, loss) in curves.items():
        ax.plot(x, loss, "o-", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path, dpi=120)


def metrics_against_axis(xs: list, panels: dict[str, dict[str, list[float | None]]], path: Path,
                         xlabel: str) -> None:
    """One panel per metric ({metric: {group: a value or None per x}}), a line per group against the axis values
    `xs`: numbers spaced by value, anything else (names) evenly; a legend when the groups have labels."""
    numeric = all(isinstance(x, (int, float)) for x in xs)
    positions = list(xs) if numeric else list(range(len(xs)))
    labelled = max((len(groups) for groups in panels.values() if any(groups)), default=0)
    # the legend goes below the panels, where it hides no point: the figure grows a line per group
    fig = canvas_figure(max(5.0, 4.2 * len(panels)), 3.8 + 0.17 * labelled, dpi=120)
    for ax, (metric, groups) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for label, values in groups.items():
            shown = [(p, v) for p, v in zip(positions, values) if v is not None]  # a missing run leaves no point
            ax.plot([p for p, _ in shown], [v for _, v in shown], "o-", ms=4, label=label)
        ax.set_xticks(positions, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        if any(groups):
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    save(fig, path, dpi=120)


def bits_per_byte_against_parameters(runs: dict[str, tuple[int, float]], path: Path) -> None:
    """One labelled point per run ({run: (parameters, validation bits per byte)}), parameters on a log scale."""
    fig = canvas_figure(6.5, 4.2, dpi=120)
    ax = fig.add_subplot()
    for name, (parameters, bpb) in runs.items():
        ax.scatter(parameters, bpb)
        ax.annotate(name, (parameters, bpb), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    save(fig, path, dpi=120)


def reward_chart(records: list[dict], path: Path) -> None:
    """DPO's two panels over steps: reward margin and reward accuracy, training (per log record with
    "rewards/...") and held-out (per evaluation record with "eval_rewards/...")."""
    fig = canvas_figure(10, 4)
    heldout = {r["step"]: r for r in records if "eval_rewards/margins" in r}  # last evaluation of a step wins
    train = [r for r in records if "rewards/margins" in r]
    for ax, key, title in zip(fig.subplots(1, 2), ("rewards/margins", "rewards/accuracies"),
                              ("reward margin (chosen - rejected)", "reward accuracy")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], alpha=0.5, label="training batches")
        ax.plot(list(heldout), [r["eval_" + key] for r in heldout.values()], "o-", label="held-out pairs")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if train or heldout:
        fig.axes[1].axhline(0.5, color="grey", linestyle=":", linewidth=1)  # chance
    save(fig, path)


def grouped_bar_chart(labels: list[str], series: dict[str, list[float | None]], path: Path, ylabel: str, title: str,
                      errors: dict[str, list[tuple[float, float]]] | None = None,
                      ylim: tuple[float, float] | None = None, notes: list[str] | None = None) -> None:
    """Grouped bars, one group per label and one colour per series; None bars are absent and `notes` (one per
    label) are written above the group instead; `errors` are (low, high) interval ends."""
    fig = canvas_figure(max(5.0, 1.1 * len(labels) * max(1, len(series)) ** 0.5 + 2), 4)
    ax = fig.add_subplot()
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
    save(fig, path)


def bars_per_setting(labels: list[str], metrics: dict[str, list[float]], path: Path, xlabel: str) -> None:
    """One panel per metric ({title: values}), one bar per setting labelled by `labels`; a NaN bar is drawn at 0."""
    fig = canvas_figure(max(3.4, 0.5 * len(labels) + 1.5) * len(metrics), 3.8)
    for i, (title, values) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ax.bar(range(len(labels)), [0.0 if math.isnan(v) else v for v in values], color=BLUE)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30 if len(labels) > 4 else 0)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def ranked_bars(names: list[str], metrics: dict[str, list[float | None]], path: Path) -> None:
    """Side-by-side panels of horizontal bars, one panel per metric ({axis label: values}), one row per name in
    the given order from the top; a missing value is drawn at 0. Rows read across, so only the first panel names
    them."""
    fig = canvas_figure(10, 0.5 * len(names) + 2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (label, values) in zip(axes, metrics.items()):
        ax.barh(names, [v or 0.0 for v in values])
        ax.set_xlabel(label)
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticks([])
    save(fig, path)


def score_histogram(series: dict[str, list[float]], path: Path, xlabel: str, ylabel: str, title: str = "",
                    bins: int = 20, shares: bool = False) -> None:
    """Histograms of scores in [0, 1] on one PNG, NaN scores left out. A lone unnamed series ("") is drawn solid
    with its mean as a dashed line; named series (at most two: blue, then grey) are overlaid, translucent, the first
    on top, their means in the legend. `shares` scales each series to sum to 1, so that sets of different sizes
    compare."""
    fig = canvas_figure(6.4, 4.0)
    ax = fig.add_subplot()
    shown = [(name, [v for v in values if not math.isnan(v)], colour)
             for (name, values), colour in zip(series.items(), (BLUE, GREY))]
    shown = [(name, finite, colour) for name, finite, colour in shown if finite]
    for name, finite, colour in reversed(shown):  # drawn last is on top
        mean = sum(finite) / len(finite)
        weights = [1 / len(finite)] * len(finite) if shares else None
        if name:
            ax.hist(finite, bins=bins, range=(0.0, 1.0), weights=weights, alpha=0.6, color=colour,
                    label=f"{name} (mean {mean:.3f})")
        else:
            ax.hist(finite, bins=bins, range=(0.0, 1.0), weights=weights, color=colour, edgecolor="white")
            ax.axvline(mean, color=RED, linestyle="--", label=f"mean {mean:.3f}")
    if shown:
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if not shares:  # counts of texts: no half-text ticks
        ax.yaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title, fontsize=9)
    save(fig, path)


def length_histogram(word_counts: np.ndarray, path: Path) -> None:
    """Words per document, titled with the number of documents and the mean ± SD."""
    fig = canvas_figure(6, 3.5)
    ax = fig.add_subplot()
    ax.hist(word_counts, bins=LENGTH_BINS, color="tab:blue")
    ax.set(xlabel="words per document", ylabel="documents",
           title=f"{len(word_counts):,} documents, mean {word_counts.mean():.0f} ± {word_counts.std():.0f} words")
    save(fig, path)


def coverage_chart(covered: np.ndarray, path: Path, vocab_size: int | None = None) -> None:
    """Share of running words covered by the N most frequent words (covered[N - 1]), N on a log scale, with a
    word-level vocabulary size marked when given."""
    fig = canvas_figure(6, 3.5)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(covered) + 1), covered, color="tab:green")
    ax.set_xscale("log")
    ax.set(xlabel="N most frequent words", ylabel="share of running words", ylim=(0, 1.01),
           title=f"Vocabulary coverage ({len(covered):,} distinct words)")
    if vocab_size:
        share = covered[min(vocab_size, len(covered)) - 1]
        ax.axvline(vocab_size, color="tab:red", linestyle="--", label=f"vocabulary {vocab_size:,}: {share:.1%}")
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, path)


def attention_heat_map(weights: np.ndarray, tokens: list[str], title: str, path: Path) -> None:
    """weights (T, T): query positions down the side, key positions along the top, labelled with their tokens."""
    size = 2.5 + 0.16 * len(tokens)
    fig = canvas_figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
    font = max(5, min(9, 360 // max(len(tokens), 1)))
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=font)
    ax.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=font)
    ax.xaxis.tick_top()
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=10, pad=12)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    save(fig, path)


def attention_overview(maps: dict[tuple[int, int], np.ndarray], labels: dict[tuple[int, int], list[str]],
                       path: Path) -> None:
    """One small heat map per (layer, head), layers down, heads across, each titled with its labels."""
    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    fig = canvas_figure(1.9 * len(heads) + 0.5, 2.1 * len(layers) + 0.5)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            short = ", ".join(label.replace("-token", "").replace("-window", "") for label in labels[layer, head])
            ax.set_title(f"L{layer} H{head}\n{short}", fontsize=6)
    fig.suptitle("attention of every head on the first text (query down, key across)", fontsize=10)
    save(fig, path)

"""Attention heat maps as PNG files: one per head with the tokens on both axes, and a grid of all heads."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Figures are drawn on their own Agg canvas, not through pyplot: no display needed, no global figure state.


def draw_head(weights: torch.Tensor, tokens: list[str], title: str, path: Path) -> None:
    """weights (T, T): query positions down the side, key positions along the top, labelled with their tokens."""
    size = 2.5 + 0.16 * len(tokens)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    font = max(5, min(9, 360 // max(len(tokens), 1)))
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=font)
    ax.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=font)
    ax.xaxis.tick_top()
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=10, pad=12)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def draw_overview(maps: dict[tuple[int, int], torch.Tensor], labels: dict[tuple[int, int], list[str]],
                  path: Path) -> None:
    """One small heat map per (layer, head), layers down, heads across, each titled with its labels."""
    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    fig = Figure(figsize=(1.9 * len(heads) + 0.5, 2.1 * len(layers) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            short = ", ".join(label.replace("-token", "").replace("-window", "") for label in labels[layer, head])
            ax.set_title(f"L{layer} H{head}\n{short}", fontsize=6)
    fig.suptitle("attention of every head on the first text (query down, key across)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)

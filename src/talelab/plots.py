"""Charts that more than one stage draws: loss curves of a training run (from scratch or fine-tuning).

Each figure has its own Agg canvas (no display, no pyplot state), so charts can be drawn from any thread.
"""

from __future__ import annotations

from pathlib import Path


def loss_chart(records: list[dict], path: Path, held_out: str, held_out_label: str, title: str = "",
               bits_per_byte: bool = False) -> None:
    """Training loss (records with "loss") and held-out loss (records with `held_out`) against the optimizer step,
    as a PNG; with `bits_per_byte`, a second panel of validation bits per byte ("val_bpb") against training minutes
    ("elapsed_s"): what a budget of minutes buys, comparable across tokenizers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib is slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11 if bits_per_byte else 6, 4))
    FigureCanvasAgg(fig)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)

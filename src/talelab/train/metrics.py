"""What a training run measures and records: the validation loss on fixed windows, metrics.jsonl (and the
`--report-to` tracker) as it trains, metrics.csv and the loss chart when it ends.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talelab.atomic import write_text_atomic
from talelab.data.shards import Shard
from talelab.devices import own_peak_rss_mb
from talelab.plots import loss_chart
from talelab.tracking import NO_TRACKER, open_tracker


def fixed_windows(shard: Shard, count: int, length: int) -> np.ndarray:
    """Evenly spaced windows over a split, the same at every evaluation so losses are comparable."""
    span = len(shard.tokens) - length - 1
    count = max(1, min(count, span // length + 1))
    starts = np.linspace(0, span, count).astype(np.int64)
    return np.stack([shard.tokens[s:s + length + 1] for s in starts]).astype(np.int64)


@torch.no_grad()
def windowed_loss(model, windows: np.ndarray, batch_size: int, device, autocast) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[i:i + batch_size]).to(device)
        with autocast:
            _, loss = model(batch[:, :-1], batch[:, 1:])
        total += loss.item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def mean_perplexity(nll: list[float], tokens: list[int]) -> float:
    """The mean over texts of exp(a text's NLL / its scored tokens), texts without a scored token left out (nan when
    none has one): every text weighs the same, where exp(total NLL / total tokens) weighs every token the same."""
    per_text = [math.exp(n / t) for n, t in zip(nll, tokens) if t]
    return sum(per_text) / len(per_text) if per_text else math.nan


def write_metrics_csv(records: list[dict], path: Path) -> None:
    columns = sorted({key for r in records for key in r}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


def read_metrics(path: Path, up_to_step: float = math.inf) -> list[dict]:
    """Metrics of an earlier session, dropping lines past the checkpoint we resume from."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r["step"] <= up_to_step]


def restart_metrics(path: Path, resumed_step: int | None) -> tuple[list[dict], int | None]:
    """metrics.jsonl as a session of train, finetune or dpo starts: empty for a new run; resuming from the checkpoint
    of `resumed_step`, the earlier records up to it (those past it are logged again). Returns the records kept and
    the last step the earlier sessions logged, where a tracker that cannot discard points picks up."""
    earlier = read_metrics(path) if resumed_step is not None else []
    kept = [r for r in earlier if r["step"] <= resumed_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept, max((r["step"] for r in earlier), default=None)


class Metrics:
    """What a run reports as it trains: a metrics.jsonl line per record, flushed so that a killed run leaves complete
    lines, and the same record to the tracker `report_to` names (which gets `config` once); the figures on the
    progress bar; and the latest of them, for the run's summary. Only a process that `writes` (rank 0) touches the
    files and the tracker."""

    def __init__(self, run_dir: Path, bar: tqdm, writes: bool, resumed_step: int | None = None,
                 report_to: str = "none", config: dict | None = None):
        self.run_dir, self.bar, self.writes = run_dir, bar, writes
        path = run_dir / "metrics.jsonl"
        self.records, self.tracker = [], NO_TRACKER
        if writes:
            self.records, logged_through = restart_metrics(path, resumed_step)
            self.tracker = open_tracker(report_to, run_dir, config or {}, resumed_step, logged_through)
        self.file = open(path if writes else os.devnull, "a", encoding="utf-8")
        self.latest = {}

    def record(self, entry: dict) -> None:
        self.records.append(entry)
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        self.tracker.log(entry)

    def log_loss(self, step: int, loss: float, lr: float, tokens_per_s: float, elapsed: float) -> None:
        peak = own_peak_rss_mb()  # this process's own: a parent (sweep) cannot read its child's, see devices.py
        self.record({"step": step, "loss": round(loss, 5), "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                     "elapsed_s": round(elapsed, 2), **({"peak_rss_mb": round(peak)} if peak is not None else {})})
        self.bar.set_postfix(step=step, loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
        self.latest.update(loss=loss, tokens_per_s=tokens_per_s)

    def log_validation(self, step: int, val_loss: float, bytes_per_token: float, elapsed: float) -> None:
        bpb = val_loss / math.log(2) / bytes_per_token
        self.record({"step": step, "val_loss": round(val_loss, 5), "val_bpb": round(bpb, 5),
                     "elapsed_s": round(elapsed, 2)})
        if self.writes:
            self.bar.write(f"step {step}: val loss {val_loss:.4f}, {bpb:.4f} bits per byte (val split windows)")
        self.latest.update(val_loss=val_loss, val_bpb=bpb)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        self.tracker.close()

    def write_tables(self) -> None:
        """metrics.csv and the loss chart, from every record of the run."""
        if self.writes:
            write_metrics_csv(self.records, self.run_dir / "metrics.csv")
            loss_chart(self.records, self.run_dir / "loss.png", "val_loss", "validation loss", bits_per_byte=True)

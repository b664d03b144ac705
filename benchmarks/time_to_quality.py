"""Time to quality on CPU (issue 8, goal 2): bits per byte by the reference protocol against training minutes.

Runs what `talelab demo` runs (the same corpus, tokenizer and `demo` preset), keeping a checkpoint every
`--every` steps, then scores every checkpoint by the reference protocol of shared/README.md (valid-head.txt, 300
pieces, BOS + piece) and prints the curve beside the bar: Karpathy's stories260K, scored the same way. Writes
curve.md and curve.png into `--out`.

    python benchmarks/time_to_quality.py [--out runs/time-to-quality] [--minutes 7.5] [--every 100]
        [--change compile=false --change max_tokens=4915200 --label "old recipe"] [--compare OLD/curve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from talelab import paths
from talelab.demo import demo_train_overrides, prepare_demo_data, stories260k
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.experiments.sweep import configurations, parse_grid
from talelab.models.storage import load_model
from talelab.plots import validation_loss_curves
from talelab.train.loop import train

from machine import cpu_name  # benchmarks/machine.py: run as a script, this folder is on sys.path


def preset_changes(pairs: list[str]) -> dict:
    """`--change key=value` pairs, checked and typed as `talelab sweep --grid` types one configuration."""
    if not pairs:
        return {}
    combinations = parse_grid(" ".join(pairs), flag="--change")
    if len(combinations) != 1:
        raise SystemExit(f"--change: one value per key, got {len(combinations)} combinations")
    return combinations[0]


def score_checkpoints(out: Path, pieces: list[str], val_documents: list[str]) -> list[dict]:
    """Every checkpoint's bits per byte by the reference protocol; the last one's also on the prepared validation
    split (whole documents), which no recipe choice was tuned on."""
    minutes_at = {}
    for line in (out / "model" / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        minutes_at[entry["step"]] = entry["elapsed_s"] / 60
    curve = []
    checkpoints = sorted((out / "model" / "checkpoints").glob("step-*"))
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        model, tok, _ = load_model(checkpoint)
        curve.append({"step": step, "minutes": round(minutes_at[step], 2),
                      "bits_per_byte": round(score_documents(model, tok, pieces)["bits_per_byte"], 4)})
    curve[-1]["prepared_val_bits_per_byte"] = round(score_documents(model, tok, val_documents)["bits_per_byte"], 4)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/time-to-quality")
    parser.add_argument("--minutes", type=float, default=None,
                        help="a time budget instead of the demo preset's token budget")
    parser.add_argument("--every", type=int, default=100, help="steps between scored checkpoints")
    parser.add_argument("--change", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the demo preset's model or training settings, e.g. compile=false "
                             "(repeatable)")
    parser.add_argument("--label", default="talelab demo", help="this curve's name on the chart")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="curve.json of an earlier run to draw beside this one (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    prepare_demo_data(out, paths.shared_file(paths.TINYSTORIES_TRAIN), progress=False)
    data_seconds = time.perf_counter() - started
    changes = preset_changes(args.change)
    overrides = {**demo_train_overrides(out, args.minutes), "checkpoint_interval": args.every,
                 "keep_checkpoints": 10_000}
    train(*configurations("demo", changes, overrides), log=lambda *a: None)

    pieces = reference_pieces(paths.shared_file(paths.TINYSTORIES_VALID))
    val_documents = [json.loads(line)["text"] for line in (out / "prepared" / "val.jsonl").open(encoding="utf-8")]
    bar = score_documents(*stories260k(out)[:2], pieces)["bits_per_byte"]
    curve = score_checkpoints(out, pieces, val_documents)
    reached = next((c for c in curve if c["bits_per_byte"] <= bar), None)
    final = curve[-1]
    lines = [f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"python {platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
             f"demo preset changed by: {changes or 'nothing'}",
             f"data, tokenizer and pretokenizing: {data_seconds:.1f} s", "",
             "| step | training minutes | bits per byte |", "|---:|---:|---:|"]
    lines += [f"| {c['step']} | {c['minutes']:.2f} | {c['bits_per_byte']:.4f} |" for c in curve]
    lines += ["", f"baseline (stories260K, reference protocol): {bar:.4f} bits per byte",
              f"talelab demo after {final['minutes']:.2f} minutes: {final['bits_per_byte']:.4f} bits per byte "
              f"({bar / final['bits_per_byte']:.3f}x the baseline's bits per byte / ours); on the prepared "
              f"validation split ({len(val_documents)} stories): {final['prepared_val_bits_per_byte']:.4f}",
              "first checkpoint at or below the baseline: " + (f"step {reached['step']}, {reached['minutes']:.2f} "
                                                                 "minutes" if reached else "none")]
    (out / "curve.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "curve.json").write_text(json.dumps({"label": args.label, "changes": changes, "baseline": bar,
                                                "curve": curve}, indent=2) + "\n")
    curves = {}
    for earlier in map(lambda p: json.loads(p.read_text()), args.compare):
        curves[earlier.get("label", "earlier")] = ([c["minutes"] for c in earlier["curve"]],
                                                  [c["bits_per_byte"] for c in earlier["curve"]])
    curves[args.label] = ([c["minutes"] for c in curve], [c["bits_per_byte"] for c in curve])
    longest = max(x[-1] for x, _ in curves.values())
    curves[f"stories260K ({bar:.3f})"] = ([0, longest], [bar, bar])
    validation_loss_curves(curves, out / "curve.png", xlabel="training minutes (2 CPU cores)",
                           ylabel="bits per byte (reference protocol)")
    print("\n".join(lines))
    print(f"curve in {out / 'curve.png'}")


if __name__ == "__main__":
    main()

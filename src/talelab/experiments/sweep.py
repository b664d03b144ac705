"""`talelab sweep`: train several configurations under one budget and compare them in a table and two plots.

Each configuration trains in a child process (`talelab train`), so its peak memory is its own and a crash stays
contained. A finished run is never redone and an interrupted one resumes from its checkpoint, so re-running the
same command after a stop continues the sweep where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from talelab.config import ModelConfig, TrainConfig, build_train_configs
from talelab.settings import grid_axis
from talelab.errors import ConfigError, TalelabError
from talelab.models.storage import read_config, resolve_model_dir
from talelab.plots import bits_per_byte_against_parameters, validation_loss_curves
from talelab.train.loop import token_steps

MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
COLUMNS = ["name", "parameters", "tokens_seen", "wall_time_s", "tokens_per_s", "val_loss", "val_bpb", "peak_rss_mb"]


def parse_budget(budget: str) -> dict:
    """'5m' or '90s' (training time) or '200k' / '1.5M' / '300000' (tokens) as train-config overrides."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(m|min|s|k|M|)\s*", budget)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--budget {budget!r}: give a positive time ('5m', '90s') or token count ('200k', '2M')")
    value, unit = float(match.group(1)), match.group(2)
    if unit in ("m", "min", "s"):
        return {"max_minutes": value if unit != "s" else value / 60}
    return {"max_tokens": int(value * {"k": 1e3, "M": 1e6, "": 1}[unit])}


def parse_grid(grid: str) -> list[dict]:
    """'d_model=128,256 n_layers=8,12' -> every combination, as {key: value} with values typed like the field.

    Grids joined by ';' add their combinations, so any set of configurations can be listed, not only a product:
    'd_model=128 n_layers=8; d_model=512 n_layers=12' is two runs.
    """
    combinations = []
    for part in grid.split(";"):
        for combination in grid_product(part):
            if combination not in combinations:
                combinations.append(combination)
    if not combinations:
        raise ConfigError(f"--grid {grid!r}: no combinations (give key=v1,v2 with at least one value per key)")
    return combinations


def grid_product(grid: str) -> list[dict]:
    axes = []
    for part in grid.split():
        key, _, values = part.partition("=")
        if key not in MODEL_KEYS | TRAIN_KEYS or not values:
            raise ConfigError(f"--grid: '{part}' is not key=v1,v2 with a model or train config key")
        field_type = next(f.type for f in dataclasses.fields(ModelConfig if key in MODEL_KEYS else TrainConfig)
                          if f.name == key)
        axes.append(grid_axis("--grid", key, values.split(","), field_type))
    return [dict(c) for c in itertools.product(*axes)] if axes else []


def plan_runs(presets: list[str], grid: str | None, base_preset: str | None,
              every_run: dict | None = None) -> list[tuple[str, str | None, dict]]:
    """(run name, preset, overrides) for every configuration of the sweep, each checked before any of them trains.
    `every_run`: model or train settings (the command's flags) under each run's grid values."""
    every_run = every_run or {}
    runs = [(name, name, dict(every_run)) for name in presets]
    if grid:
        for combination in parse_grid(grid):
            name = "-".join(f"{k}{v}" for k, v in combination.items())
            runs.append((f"{base_preset}-{name}" if base_preset else name, base_preset, {**every_run, **combination}))
    if not runs:
        raise ConfigError("sweep: name presets and/or give --grid")
    for name, preset, overrides in runs:  # an unknown preset or an impossible shape fails now, not hours later
        try:
            configurations(preset, overrides, {})
        except ConfigError as e:
            raise ConfigError(f"sweep run '{name}': {e}") from None
    return runs


def configurations(preset: str | None, overrides: dict, train: dict):
    """The model and train configs of one run: the preset, then the `train` settings, then the grid's values."""
    model = {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    train = {**train, **{k: v for k, v in overrides.items() if k in TRAIN_KEYS}}
    return build_train_configs(preset, overrides={"model": model, "train": train})


def run_configuration(run_dir: Path, preset: str | None, overrides: dict, common: dict, budget: dict) -> dict:
    """Train one configuration in a child process (resuming it if it was interrupted); its result row."""
    model_config, train_config = configurations(preset, overrides, {**common, "out": str(run_dir), "progress": False})
    tokens_per_step = train_config.batch_size * train_config.grad_accum * model_config.context_length
    # the sweep's budget replaces whatever budget the preset carries (the demo's tokens, a preset's minutes)
    if "max_tokens" in budget:
        train_config = dataclasses.replace(train_config, max_steps=token_steps(budget["max_tokens"], tokens_per_step),
                                           max_tokens=0, max_minutes=0.0)
    else:
        train_config = dataclasses.replace(train_config, max_minutes=budget["max_minutes"], max_steps=10**9,
                                           max_tokens=0)
    train_config = dataclasses.replace(train_config, schedule_steps=train_config.max_steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "sweep-config.yaml"
    config_file.write_text(yaml.safe_dump({"model": dataclasses.asdict(model_config),
                                           "train": dataclasses.asdict(train_config)}), encoding="utf-8")
    command = [sys.executable, "-m", "talelab", "train", "--config", str(config_file)]
    if (run_dir / "latest").is_file():
        command.append("--resume")
    started = time.perf_counter()
    with open(run_dir / "train.log", "a", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak memory, not the sweep's
    if os.waitstatus_to_exitcode(status) != 0:
        lines = (run_dir / "train.log").read_text(encoding="utf-8").strip().splitlines()
        raise TalelabError(f"{run_dir}: training failed ({lines[-1] if lines else 'no output'}); "
                           f"see {run_dir / 'train.log'}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last_val = [r for r in records if "val_loss" in r][-1]
    last_train = [r for r in records if "loss" in r][-1]
    parameters = read_config(resolve_model_dir(run_dir))["parameters"]
    return {"name": run_dir.name, "parameters": parameters, "tokens_seen": last_train["step"] * tokens_per_step,
            "wall_time_s": round(last_train["elapsed_s"], 1),
            "tokens_per_s": round(last_train["step"] * tokens_per_step / max(last_train["elapsed_s"], 1e-9)),
            "val_loss": round(last_val["val_loss"], 4), "val_bpb": round(last_val["val_bpb"], 4),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "this_session_s": round(time.perf_counter() - started, 1)}


def sweep(presets: list[str], grid: str | None, budget: str, out: str | Path, common: dict,
          base_preset: str | None = None, every_run: dict | None = None, log=print) -> list[dict]:
    """Run every configuration not yet finished, then write results.md, results.csv and the plots into `out`.
    `common`: where the data is and what runs it (data, tokenizer, device, dtype); `every_run`: model and train
    settings applied to every run, under its grid values."""
    limits = parse_budget(budget)
    runs = plan_runs(presets, grid, base_preset, every_run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, preset, overrides) in enumerate(runs, start=1):
        run_dir = out / name
        done = run_dir / "result.json"
        if done.is_file():  # finished in an earlier session: never redone
            rows.append(json.loads(done.read_text(encoding="utf-8")))
            log(f"[{i}/{len(runs)}] {name}: done earlier")
            continue
        log(f"[{i}/{len(runs)}] {name}: training ({budget})")
        row = run_configuration(run_dir, preset, overrides, common, limits)
        done.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
        rows.append(row)
        log(f"[{i}/{len(runs)}] {name}: val loss {row['val_loss']}, {row['val_bpb']} bits per byte, "
            f"{row['parameters']:,} parameters, {row['tokens_per_s']:,} tokens/s")
        write_results(rows, out, budget)
    write_results(rows, out, budget)
    return rows


def write_results(rows: list[dict], out: Path, budget: str) -> None:
    """results.csv, results.md (best first) and the two plots; loss curves run against tokens seen when the budget
    is tokens (every run ends at the same x) and against training time when it is time."""
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Sweep results (budget {budget} per run)", "",
             "| run | parameters | tokens seen | wall time (s) | tokens/s | val loss | val bits/byte | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["val_loss"]):
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['tokens_seen']:,} | {r['wall_time_s']} | "
                     f"{r['tokens_per_s']:,} | {r['val_loss']} | {r['val_bpb']} | {r['peak_rss_mb']} |")
    lines += ["", "Sorted by validation loss (windows of the prepared val split); bits per byte make runs with "
              "different tokenizers comparable. Plots: bpb_vs_parameters.png, loss_curves.png."]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bits_per_byte_against_parameters({r["name"]: (r["parameters"], r["val_bpb"]) for r in rows},
                                     out / "bpb_vs_parameters.png")
    by_tokens = "max_tokens" in parse_budget(budget)
    validation_loss_curves(validation_curves(rows, out, by_tokens), out / "loss_curves.png",
                           "tokens seen" if by_tokens else "training time (s)")


def validation_curves(rows: list[dict], out: Path, by_tokens: bool) -> dict[str, tuple[list[float], list[float]]]:
    """Each run's validation losses from its metrics.jsonl, against tokens seen (steps times the run's tokens per
    step) or against training seconds."""
    curves = {}
    for r in rows:
        lines = (out / r["name"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        val = [v for v in records if "val_loss" in v]
        tokens_per_step = r["tokens_seen"] / max(t["step"] for t in records if "loss" in t)
        x = [v["step"] * tokens_per_step for v in val] if by_tokens else [v["elapsed_s"] for v in val]
        curves[r["name"]] = (x, [v["val_loss"] for v in val])
    return curves

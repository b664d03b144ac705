"""`talelab trials`: a grid of LoRA configurations, each one `talelab finetune` run, compared in one table, with the
base model untuned (measured the same way, nothing trained) as its first row unless --no-base-row.

A finished trial (its summary.json) is never redone and an interrupted one resumes from its checkpoint, so running
the same command again continues the grid where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import time
from pathlib import Path

from talelab.atomic import write_text_atomic
from talelab.config import FinetuneConfig, LoraConfig, TrialsConfig
from talelab.errors import ConfigError
from talelab.finetune.sft import evaluate_untrained, finetune
from talelab.plots import ranked_bars
from talelab.settings import config_values, grid_axis, resolve

# Grid keys: the LoRA knobs by their LoraConfig names, any other FinetuneConfig field by its name, and short forms.
ALIASES = {"r": "rank", "lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "modules": "target_modules", "batch": "batch_size"}
LORA_TYPES = {f.name: f.type for f in dataclasses.fields(LoraConfig)}
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(FinetuneConfig) if f.name != "lora"}
COLUMNS = ["trial", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "lr", "batch_size", "epochs",
           "steps", "trainable_percent", "train_loss", "val_loss", "perplexity", "mean_example_perplexity", "bleu",
           "wall_time_s"]
BASE_TRIAL = "base (untuned)"  # the base row's name in the table; its folder is base/


def parse_grid(grid: str) -> list[dict]:
    """'rank=4,8 alpha=8,16' -> every combination as {key: value}, values typed like the fields.

    target_modules choices are separated by ';' (their module names by '+' or ','), e.g. 'modules=llama;q_proj+v_proj'.
    """
    axes = []
    for part in grid.split():
        key, _, values = part.partition("=")
        name = ALIASES.get(key, key)
        kind = LORA_TYPES.get(name) or FIELD_TYPES.get(name)
        if kind is None or not values:
            raise ConfigError(f"--grid: '{part}' is not key=v1,v2 with a fine-tuning key (rank, alpha, dropout, "
                              f"modules, lr, batch, epochs, max_steps, or a finetune flag name)")
        if name == "target_modules":  # each choice is a list of module names itself
            axes.append(grid_axis("--grid", name, [v.replace("+", ",") for v in values.split(";")], "str"))
        else:
            axes.append(grid_axis("--grid", name, values.split(","), kind))
    combinations = [dict(c) for c in itertools.product(*axes)] if axes else []
    if not combinations:
        raise ConfigError(f"--grid {grid!r}: no combinations")
    return combinations


def trial_name(values: dict) -> str:
    """A folder name that says what the trial changes: 'rank=4_alpha=8_lr=0.0002'."""
    return "_".join(f"{k}={str(v).replace(',', '+')}" for k, v in values.items())


def trial_layer(values: dict) -> dict:
    """One combination as FinetuneConfig values, the LoRA knobs under 'lora'."""
    lora = {k: v for k, v in values.items() if k in LORA_TYPES}
    return {**{k: v for k, v in values.items() if k not in LORA_TYPES}, **({"lora": lora} if lora else {})}


def trial_row(name: str, summary: dict, wall_time: float) -> dict:
    config = summary["config"]
    lora = {("target_modules" if k == "target_modules" else f"lora_{k}"): v for k, v in config["lora"].items()}
    lora["lora_alpha"] = LoraConfig(**config["lora"]).effective_alpha
    return {"trial": name, **{k: v for k, v in {**config, **lora}.items() if k in COLUMNS}, "steps": summary["steps"],
            "trainable_percent": round(summary["trainable_percent"], 4), "train_loss": round(summary["train_loss"], 4),
            **held_out_cells(summary), "wall_time_s": round(wall_time, 1)}


def base_row(summary: dict, wall_time: float) -> dict:
    """The base model's row: nothing trained, so no LoRA or training settings."""
    return {**dict.fromkeys(COLUMNS), "trial": BASE_TRIAL, "steps": 0, "trainable_percent": 0.0,
            **held_out_cells(summary), "wall_time_s": round(wall_time, 1)}


def held_out_cells(summary: dict) -> dict:
    """A run's held-out figures, rounded (None where the run has none)."""
    digits = {"val_loss": ("eval_loss", 4), "perplexity": ("perplexity", 3),
              "mean_example_perplexity": ("mean_example_perplexity", 3), "bleu": ("bleu", 2)}
    return {column: round(summary[key], places) if summary.get(key) is not None else None
            for column, (key, places) in digits.items()}


def trials(config: TrialsConfig, data_root=None, log=print) -> list[dict]:
    """Run every combination of the grid over the fine-tuning settings; write results.md/.csv/.png."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    combinations = parse_grid(config.grid)
    common = config_values(config.finetune)
    rows = [measure_base(common, out, data_root, log)] if config.base_row else []
    for number, values in enumerate(combinations, start=1):
        name = trial_name(values)
        folder = out / name
        summary_path = folder / "summary.json"
        if summary_path.is_file():
            done = json.loads(summary_path.read_text(encoding="utf-8"))
            if done.get("stopped_at_step") is None and "wall_time_s" in done:
                log(f"trial {number}/{len(combinations)} {name}: finished earlier, not redone")
                rows.append(trial_row(name, done, done["wall_time_s"]))
                continue
        log(f"trial {number}/{len(combinations)} {name}")
        resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("checkpoint-*"))
        trial = resolve(FinetuneConfig, [("trials", common), (f"--grid {name}", trial_layer(values)),
                                         ("trial", {"out": str(folder), "resume": resume})])
        started = time.time()
        summary = finetune(trial, data_root, log=lambda line: log(f"  {line}"))
        summary["wall_time_s"] = time.time() - started
        write_text_atomic(summary_path, json.dumps(summary, indent=2, default=str) + "\n")  # marks it finished
        rows.append(trial_row(name, summary, summary["wall_time_s"]))
    write_results(rows, out, common)
    return rows


def measure_base(common: dict, out: Path, data_root, log) -> dict:
    """The base row: the model every trial starts from, measured as a trial is but trained for no step (read back
    when measured earlier)."""
    folder = out / "base"
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        done = json.loads(summary_path.read_text(encoding="utf-8"))
        if "wall_time_s" in done:
            log("base model: measured earlier, not redone")
            return base_row(done, done["wall_time_s"])
    log("base model, untuned")
    started = time.time()
    summary = evaluate_untrained(resolve(FinetuneConfig, [("trials", common), ("base", {"out": str(folder)})]),
                                 data_root, log=lambda line: log(f"  {line}"))
    summary["wall_time_s"] = time.time() - started
    write_text_atomic(summary_path, json.dumps(summary, indent=2, default=str) + "\n")  # marks it finished
    return base_row(summary, summary["wall_time_s"])


def write_results(rows: list[dict], out: Path, common: dict) -> None:
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def cell(value) -> str:
        return "–" if value is None else str(value)

    lines = [f"# LoRA trials: {common.get('task', '')} on {Path(str(common.get('data', ''))).name} "
             f"(base {common.get('base', '')})", "",
             "| trial | rank | alpha | dropout | target modules | lr | batch | epochs | steps | trainable % | "
             "train loss | val loss | perplexity | mean perplexity | BLEU | wall time (s) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = [r for r in rows if r["trial"] == BASE_TRIAL]
    ranked = base + sorted((r for r in rows if r["trial"] != BASE_TRIAL),
                           key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0))
    for r in ranked:
        lines.append("| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |")
    lines += ["", ("The base model untuned (nothing trained, measured the same way) first, then the trials sorted by "
                   "held-out loss. " if base else "Sorted by held-out loss. ")
              + "Val loss: held-out loss per scored token (answers, or stories after their prompt); perplexity = "
              "exp(val loss), every token weighing the same; mean perplexity = the mean over held-out examples of "
              "exp(each one's own loss), every example weighing the same. BLEU (sacrebleu, corpus) of greedy answers "
              "to held-out prompts against their references; wall time includes evaluation."]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    charted = {"held-out loss": [r["val_loss"] for r in ranked], "BLEU": [r["bleu"] for r in ranked]}
    ranked_bars([r["trial"] for r in ranked], charted, out / "results.png")

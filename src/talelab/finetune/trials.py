"""`talelab trials`: LoRA configurations, a grid or a list, each one `talelab finetune` (method sft) or `talelab dpo`
(method dpo) run, compared in one table, with the base model untuned (measured the same way, nothing trained) as its
first row unless --no-base-row.

A finished trial (its summary.json) is never redone and an interrupted one resumes from its checkpoint, so running
the same command again continues the trials where they stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talelab.atomic import write_text_atomic
from talelab.config import FinetuneConfig, LoraConfig, PreferenceConfig, TrialsConfig
from talelab.errors import ConfigError
from talelab.finetune import dpo, sft
from talelab.plots import ranked_bars
from talelab.settings import grid_axis, resolve

# Trial keys: the LoRA knobs by their LoraConfig names, any other field of the method's config by its name, and
# short forms.
ALIASES = {"r": "rank", "lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "modules": "target_modules", "batch": "batch_size"}
LORA_TYPES = {f.name: f.type for f in dataclasses.fields(LoraConfig)}
LORA_COLUMNS = ["lora_rank", "lora_alpha", "lora_dropout", "target_modules"]
# the figures a column shows: (where in a run's summary.json, decimals)
QUESTION_FIGURES = {"question_bleu": (("questions", "bleu"), 2),
                    "question_perplexity": (("questions", "perplexity"), 3)}
OPTIONAL = {"test_loss", *QUESTION_FIGURES}  # columns left out of the table when no row has them
HEADERS = {"trial": "trial", "lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "target_modules": "target modules", "beta": "beta", "lr": "lr", "batch_size": "batch",
           "grad_accum": "grad accum", "epochs": "epochs", "steps": "steps", "trainable_percent": "trainable %",
           "train_loss": "train loss", "val_loss": "val loss", "perplexity": "perplexity",
           "mean_example_perplexity": "mean perplexity", "bleu": "BLEU", "test_loss": "test loss",
           "reward_accuracy": "reward accuracy", "reward_margin": "reward margin", "question_bleu": "questions BLEU",
           "question_perplexity": "questions perplexity", "wall_time_s": "wall time (s)"}
BASE_TRIAL = "base (untuned)"  # the base row's name in the table; its folder is base/
NOTES = {  # what an optional column means, said when the table has it
    "test_loss": "Test loss: held-out loss of the --test-fraction split, measured once after training.",
    "question_bleu": "Questions BLEU: corpus BLEU (sacrebleu, 0-100) of each model's greedy answers to the "
                     "--questions set against their reference answers; questions perplexity: exp(total NLL / total "
                     "tokens) of the reference answers given the questions (each answer's completion tokens and EOS, "
                     "as training scores an answer). Every answer is in <trial>/answers.jsonl (base/answers.jsonl "
                     "for the base)."}


@dataclass(frozen=True)
class Method:
    """What a trial runs: the stage's config, the stage, its measurement of the untrained start, the settings shown
    beside the LoRA ones and the figures shown after them, and what the figures mean."""

    config: type
    train: Callable
    untrained: Callable
    settings: list[str]
    figures: dict[str, tuple[tuple[str, ...], int]]
    title: str
    note: str


METHODS = {
    "sft": Method(FinetuneConfig, sft.finetune, sft.evaluate_untrained, ["lr", "batch_size", "epochs"],
                  {"train_loss": (("train_loss",), 4), "val_loss": (("eval_loss",), 4),
                   "perplexity": (("perplexity",), 3), "mean_example_perplexity": (("mean_example_perplexity",), 3),
                   "bleu": (("bleu",), 2), "test_loss": (("test_loss",), 4)},
                  "LoRA trials", "Val loss: held-out loss per scored token (answers, or stories after their prompt); "
                  "perplexity = exp(val loss), every token weighing the same; mean perplexity = the mean over "
                  "held-out examples of exp(each one's own loss), every example weighing the same. BLEU (sacrebleu, "
                  "corpus) of greedy answers to held-out prompts against their references."),
    "dpo": Method(PreferenceConfig, dpo.run_dpo, dpo.evaluate_untrained, ["beta", "lr", "batch_size", "grad_accum",
                                                                         "epochs"],
                  {"train_loss": (("train_loss",), 4), "val_loss": (("heldout_after", "loss"), 4),
                   "reward_accuracy": (("heldout_after", "accuracy"), 4),
                   "reward_margin": (("heldout_after", "margin"), 4)},
                  "DPO trials", "Val loss: DPO loss on the held-out pairs after training (ln 2 = 0.6931 untrained: "
                  "the policy is the reference); reward accuracy: share of held-out pairs whose chosen response's "
                  "implicit reward beta * (log pi - log pi_ref) exceeds the rejected one's (a tie counts as wrong); "
                  "reward margin: the mean difference of the two rewards."),
}


def parse_grid(grid: str, config_class: type = FinetuneConfig) -> list[dict]:
    """'rank=4,8 alpha=8,16' -> every combination as {key: value}, values typed like `config_class`'s fields.

    target_modules choices are separated by ';' (their module names by '+' or ','), e.g. 'modules=llama;q_proj+v_proj'.
    """
    field_types = {f.name: f.type for f in dataclasses.fields(config_class) if f.name != "lora"}
    axes = []
    for part in grid.split():
        key, _, values = part.partition("=")
        name = ALIASES.get(key, key)
        kind = LORA_TYPES.get(name) or field_types.get(name)
        if kind is None or not values:
            raise ConfigError(f"--grid: '{part}' is not key=v1,v2 with a trial key (rank, alpha, dropout, modules, "
                              f"lr, batch, epochs, max_steps, beta (dpo), or a flag name of the method's command)")
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


def listed_values(trial: dict) -> dict:
    """A trials-list entry's settings by their field names (target_modules given as a list joined by commas)."""
    values = {}
    for key, value in trial.items():
        name = ALIASES.get(key, key)
        if name != "name":
            values[name] = ",".join(map(str, value)) if name == "target_modules" and isinstance(value, list) else value
    return values


def trial_layer(values: dict) -> dict:
    """One trial's values as config values, the LoRA knobs under 'lora'."""
    lora = {k: v for k, v in values.items() if k in LORA_TYPES}
    return {**{k: v for k, v in values.items() if k not in LORA_TYPES}, **({"lora": lora} if lora else {})}


def planned_trials(config: TrialsConfig, method: Method, common: dict, out: Path) -> list[tuple[str, object]]:
    """(name, resolved config) of every trial, the list's in order or the grid's combinations; all checked before
    any trial runs. A trial with checkpoints in its folder resumes."""
    if config.trials:
        named = [(t["name"], listed_values(t)) for t in config.trials]
    else:
        named = [(trial_name(values), values) for values in parse_grid(config.grid, method.config)]
    plans = []
    for name, values in named:
        folder = out / name
        resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("checkpoint-*"))
        plans.append((name, resolve(method.config, [("trials", common), (f"trial {name}", trial_layer(values)),
                                                    ("trial", {"out": str(folder), "resume": resume})],
                                    "talelab trials")))
    return plans


def figure_cells(summary: dict, figures: dict) -> dict:
    """A run's figures for the table's columns, rounded (None where the run has none)."""
    cells = {}
    for column, (path, places) in {**figures, **QUESTION_FIGURES}.items():
        value = summary
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        cells[column] = round(value, places) if value is not None else None
    return cells


def trial_row(name: str, summary: dict, wall_time: float, method: Method) -> dict:
    config = summary["config"]
    lora = LoraConfig(**config["lora"])
    return {"trial": name, "lora_rank": lora.rank, "lora_alpha": lora.effective_alpha, "lora_dropout": lora.dropout,
            "target_modules": lora.target_modules, **{k: config[k] for k in method.settings},
            "steps": summary["steps"], "trainable_percent": round(summary["trainable_percent"], 4),
            **figure_cells(summary, method.figures), "wall_time_s": round(wall_time, 1)}


def base_row(summary: dict, wall_time: float, method: Method) -> dict:
    """The base model's row: nothing trained, so no LoRA or training settings."""
    return {"trial": BASE_TRIAL, "steps": 0, "trainable_percent": 0.0, **figure_cells(summary, method.figures),
            "wall_time_s": round(wall_time, 1)}


def finished(summary_path: Path) -> dict | None:
    """A trial's summary when the trial (or the base row) finished: written by trials, with its wall time."""
    if not summary_path.is_file():
        return None
    done = json.loads(summary_path.read_text(encoding="utf-8"))
    return done if done.get("stopped_at_step") is None and "wall_time_s" in done else None


def timed(stage: Callable, config, data_root, log) -> dict:
    """Run a stage on its config, its log lines indented; summary.json in config.out, with the wall time, marks it
    finished."""
    started = time.time()
    summary = stage(config, data_root, log=lambda line: log(f"  {line}"))
    summary["wall_time_s"] = time.time() - started
    write_text_atomic(Path(config.out) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def trials(config: TrialsConfig, data_root=None, log=print) -> list[dict]:
    """Run every trial (the list, or the grid's combinations) of the method; write results.md/.csv/.png."""
    out = Path(config.out)
    method = METHODS[config.method]
    common = config.finetune if config.method == "sft" else config.dpo
    shared = resolve(method.config, [("trials", common)], "talelab trials")  # the settings every trial shares
    plans = planned_trials(config, method, common, out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [measure_base(method, common, out, data_root, log)] if config.base_row else []
    for number, (name, trial) in enumerate(plans, start=1):
        done = finished(Path(trial.out) / "summary.json")
        if done:
            log(f"trial {number}/{len(plans)} {name}: finished earlier, not redone")
        else:
            log(f"trial {number}/{len(plans)} {name}")
            done = timed(method.train, trial, data_root, log)
        rows.append(trial_row(name, done, done["wall_time_s"], method))
    write_results(rows, out, shared, method, listed=bool(config.trials))
    return rows


def measure_base(method: Method, common: dict, out: Path, data_root, log) -> dict:
    """The base row: the model every trial starts from, measured as a trial is but trained for no step (read back
    when measured earlier)."""
    folder = out / "base"
    done = finished(folder / "summary.json")
    if done:
        log("base model: measured earlier, not redone")
    else:
        log("base model, untuned")
        done = timed(method.untrained, resolve(method.config, [("trials", common), ("base", {"out": str(folder)})]),
                     data_root, log)
    return base_row(done, done["wall_time_s"], method)


def write_results(rows: list[dict], out: Path, shared, method: Method, listed: bool) -> None:
    """results.csv, results.md (the base first, then the trials as listed or by held-out loss) and results.png."""
    columns = ["trial", *LORA_COLUMNS, *method.settings, "steps", "trainable_percent", *method.figures,
               *QUESTION_FIGURES, "wall_time_s"]
    columns = [c for c in columns if c not in OPTIONAL or any(r.get(c) is not None for r in rows)]
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    base = [r for r in rows if r["trial"] == BASE_TRIAL]
    tried = [r for r in rows if r["trial"] != BASE_TRIAL]
    ranked = base + (tried if listed else sorted(tried, key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0)))
    task = f": {shared.task}" if isinstance(shared, FinetuneConfig) else ""
    lines = [f"# {method.title}{task} on {Path(shared.data).name} (base {shared.base})", "",
             "| " + " | ".join(HEADERS[c] for c in columns) + " |",
             "|" + "|".join("---" if c in ("trial", "target_modules") else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join("–" if r.get(c) is None else str(r[c]) for c in columns) + " |" for r in ranked]
    order = "in the order listed" if listed else "sorted by held-out loss"
    lines += ["", (f"The base model untuned (nothing trained, measured the same way) first, then the trials {order}. "
                   if base else f"Trials {order}. ") + method.note + " Wall time includes evaluation."
              + "".join(f" {note}" for column, note in NOTES.items() if column in columns)]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    charted = {label: [r.get(c) for r in ranked] for c, label in (("val_loss", "held-out loss"), ("bleu", "BLEU"),
                                                                  ("reward_accuracy", "reward accuracy"),
                                                                  ("question_bleu", "questions BLEU"))
               if c in columns}
    ranked_bars([r["trial"] for r in ranked], charted, out / "results.png")

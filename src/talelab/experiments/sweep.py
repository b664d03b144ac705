"""`talelab sweep`: train several configurations under one budget and compare them in a table and plots.

Each configuration trains in a child process (`talelab train`), so its peak memory is its own and a crash stays
contained; with --eval-suites each finished run is then evaluated in another (`talelab eval`), and the headline
figures of its report join the table. A finished run is never redone (nor a complete evaluation), and an
interrupted one resumes from its checkpoint, so re-running the same command after a stop continues the sweep where
it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from talelab.config import EvalConfig, ModelConfig, TrainConfig, build_train_configs
from talelab.errors import ConfigError, TalelabError
from talelab.models.storage import read_config, resolve_model_dir
from talelab.plots import bits_per_byte_against_parameters, metrics_against_axis, validation_loss_curves
from talelab.settings import config_values, grid_axis, merge, resolve
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


def parse_grid(grid: str, flag: str = "--grid") -> list[dict]:
    """'d_model=128,256 n_layers=8,12' -> every combination, as {key: value} with values typed like the field;
    errors name `flag`, the option the grid came from.

    Grids joined by ';' add their combinations, so any set of configurations can be listed, not only a product:
    'd_model=128 n_layers=8; d_model=512 n_layers=12' is two runs.
    """
    combinations = []
    for part in grid.split(";"):
        for combination in grid_product(part, flag):
            if combination not in combinations:
                combinations.append(combination)
    if not combinations:
        raise ConfigError(f"{flag} {grid!r}: no combinations (give key=v1,v2 with at least one value per key)")
    return combinations


def grid_product(grid: str, flag: str) -> list[dict]:
    axes = []
    for part in grid.split():
        key, _, values = part.partition("=")
        if key not in MODEL_KEYS | TRAIN_KEYS or not values:
            raise ConfigError(f"{flag}: '{part}' is not key=v1,v2 with a model or train config key")
        field_type = next(f.type for f in dataclasses.fields(ModelConfig if key in MODEL_KEYS else TrainConfig)
                          if f.name == key)
        axes.append(grid_axis(flag, key, values.split(","), field_type))
    return [dict(c) for c in itertools.product(*axes)] if axes else []


def plan_runs(presets: list[str], grid: str | None, base_preset: str | None,
              every_run: dict | None = None) -> list[tuple[str, str | None, dict]]:
    """(run name, preset, overrides) for every configuration of the sweep, each checked before any of them trains.
    `every_run`: model or train settings (the command's flags) under each run's grid values."""
    every_run = every_run or {}
    runs = [(name, name, dict(every_run)) for name in presets]
    runs += [(name, base_preset, {**every_run, **combination})
             for name, combination in grid_runs(grid, base_preset).items()]
    if not runs:
        raise ConfigError("sweep: name presets and/or give --grid")
    for name, preset, overrides in runs:  # an unknown preset or an impossible shape fails now, not hours later
        try:
            configurations(preset, overrides, {})
        except ConfigError as e:
            raise ConfigError(f"sweep run '{name}': {e}") from None
    return runs


def grid_runs(grid: str | None, base_preset: str | None) -> dict[str, dict]:
    """{run name: its grid values} for every combination of `grid` (none without one)."""
    runs = {}
    for combination in parse_grid(grid) if grid else []:
        name = "-".join(f"{k}{v}" for k, v in combination.items())
        runs[f"{base_preset}-{name}" if base_preset else name] = combination
    return runs


def with_every_key(axes: dict[str, dict], runs: list[tuple[str, str | None, dict]]) -> dict[str, dict]:
    """Each grid run's values for every key some part of the grid sets, a key its part leaves out taking the run's
    own value: in 'd_model=64; d_model=64 objective=contrastive' the first run is objective=next-token, so the
    objective is an axis with two values."""
    keys = list(dict.fromkeys(k for values in axes.values() for k in values))
    complete = {}
    for name, preset, overrides in runs:
        if name in axes:
            model, train = configurations(preset, overrides, {})
            complete[name] = {k: axes[name][k] if k in axes[name] else
                              getattr(model if k in MODEL_KEYS else train, k) for k in keys}
    return complete


def configurations(preset: str | None, overrides: dict, train: dict):
    """The model and train configs of one run: the preset, then the `train` settings, then the grid's values."""
    model = {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    train = {**train, **{k: v for k, v in overrides.items() if k in TRAIN_KEYS}}
    return build_train_configs(preset, overrides={"model": model, "train": train})


def run_settings(run_dir: Path, preset: str | None, overrides: dict, common: dict, budget: dict) -> str:
    """The YAML (RUN/sweep-config.yaml) that trains one configuration: model and train settings, the sweep's budget
    in place of any the preset carries (the demo's tokens, a preset's minutes)."""
    model_config, train_config = configurations(preset, overrides, {**common, "out": str(run_dir), "progress": False})
    tokens_per_step = train_config.batch_size * train_config.grad_accum * model_config.context_length
    if "max_tokens" in budget:
        train_config = dataclasses.replace(train_config, max_steps=token_steps(budget["max_tokens"], tokens_per_step),
                                           max_tokens=0, max_minutes=0.0)
    else:
        train_config = dataclasses.replace(train_config, max_minutes=budget["max_minutes"], max_steps=10**9,
                                           max_tokens=0)
    train_config = dataclasses.replace(train_config, schedule_steps=train_config.max_steps)
    return yaml.safe_dump({"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)})


def set_aside_if_changed(run_dir: Path, settings: str, out: Path, log, step: str) -> None:
    """A run made with other settings than these (a changed budget, preset or grid value) moves to
    OUT/superseded/NAME, so that it is trained again from the start instead of being reported, or resumed, under
    settings it never had. The previous superseded copy of that run is replaced."""
    saved = run_dir / "sweep-config.yaml"
    if saved.is_file() and saved.read_text(encoding="utf-8") != settings:
        target = out / "superseded" / run_dir.name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(exist_ok=True)
        run_dir.rename(target)
        log(f"{step}: its settings changed since it ran: training it again (the earlier run is in {target})")


def run_configuration(run_dir: Path, settings: str) -> dict:
    """Train one configuration (`settings`: run_settings' YAML) in a child process, resuming it if it was
    interrupted; its result row."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "sweep-config.yaml"
    config_file.write_text(settings, encoding="utf-8")
    values = yaml.safe_load(settings)
    train = values["train"]
    tokens_per_step = train["batch_size"] * train["grad_accum"] * values["model"]["context_length"]
    command = [sys.executable, "-m", "talelab", "train", "--config", str(config_file)]
    if (run_dir / "latest").is_file():
        command.append("--resume")
    started = time.perf_counter()
    usage = run_child(command, run_dir / "train.log", "training")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last_val = [r for r in records if "val_loss" in r][-1]
    last_train = [r for r in records if "loss" in r][-1]
    parameters = read_config(resolve_model_dir(run_dir))["parameters"]
    return {"name": run_dir.name, "parameters": parameters, "tokens_seen": last_train["step"] * tokens_per_step,
            "wall_time_s": round(last_train["elapsed_s"], 1),
            "tokens_per_s": round(last_train["step"] * tokens_per_step / max(last_train["elapsed_s"], 1e-9)),
            "val_loss": round(last_val["val_loss"], 4), "val_bpb": round(last_val["val_bpb"], 4),
            # the child's own peak as it logged it; wait4's ru_maxrss would carry a larger parent's (devices.py)
            "peak_rss_mb": last_train.get("peak_rss_mb", round(usage.ru_maxrss / 1024)),
            "this_session_s": round(time.perf_counter() - started, 1)}


def run_child(command: list[str], log_file: Path, what: str):
    """Run `command` with its output appended to `log_file` (after the command line itself, so the log says what to
    run again); the child's resource usage. A failure is a one-line TalelabError naming the run and the log."""
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak memory, not the sweep's
    if os.waitstatus_to_exitcode(status) != 0:
        lines = log_file.read_text(encoding="utf-8").strip().splitlines()
        last = lines[-1].removeprefix("talelab: error: ") if lines else "no output"  # the child's own error line
        raise TalelabError(f"{log_file.parent}: {what} failed ({last}); see {log_file}")
    return usage


def requested_suites(suites: str) -> list[str]:
    """The suites `talelab eval --suite SUITES` runs; an unknown name is a ConfigError."""
    # imported here: evaluate.report loads scipy and sacrebleu, which `talelab memory`'s children (they import this
    # module) should neither wait for nor count in their peak memory
    from talelab.evaluate.report import parse_suites

    return parse_suites(suites)


def eval_config(run_dir: Path, suites: str, settings: dict, device: str) -> EvalConfig:
    """`talelab eval`'s config for one run: the sweep's eval settings (on the sweep's device unless they name one),
    its suites, and RUN/eval as the report directory. Built for every run before the first one trains, so a
    mistake in them costs no training."""
    requested_suites(suites)
    values = merge({"decode": {"device": device}}, settings)
    values.update(model=str(run_dir), suite=suites, out=str(run_dir / "eval"), progress=False)
    try:
        return resolve(EvalConfig, [("sweep's --eval-* settings", values)])
    except ConfigError as e:
        raise ConfigError(f"sweep run '{run_dir.name}': {e}") from None


def finished_evaluation(config: EvalConfig, suites: str) -> dict | None:
    """The headline figures of RUN/eval/report.json when it was made with these settings, holds every suite asked
    for and none failed; None when the run is still to evaluate (never evaluated, other settings, a failed section,
    or fewer suites than now asked for)."""
    run_dir = Path(config.model)
    try:
        if (run_dir / "eval-config.yaml").read_text(encoding="utf-8") != eval_settings_text(config):
            return None
        report = json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sections = report.get("sections", {})
    complete = set(requested_suites(suites)) <= set(sections)
    return report["headline"] if complete and all(s.get("status") == "ok" for s in sections.values()) else None


def eval_settings_text(config: EvalConfig) -> str:
    return yaml.safe_dump(config_values(config), sort_keys=False)


def evaluate_run(config: EvalConfig, data_root: str | None) -> dict:
    """Evaluate one trained run in a child process, exactly as `talelab [--data-root DIR] eval RUN --config
    RUN/eval-config.yaml` would (its output in RUN/eval.log); the report's headline figures."""
    run_dir = Path(config.model)
    config_file = run_dir / "eval-config.yaml"
    config_file.write_text(eval_settings_text(config), encoding="utf-8")
    root = ["--data-root", str(data_root)] if data_root else []
    run_child([sys.executable, "-m", "talelab", *root, "eval", str(run_dir), "--config", str(config_file)],
              run_dir / "eval.log", "evaluation")
    return json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))["headline"]


def sweep(presets: list[str], grid: str | None, budget: str, out: str | Path, common: dict,
          base_preset: str | None = None, every_run: dict | None = None, eval_suites: str = "",
          eval_settings: dict | None = None, data_root: str | None = None, axis_metrics: tuple | list = ("val_loss",),
          log=print) -> list[dict]:
    """Run every configuration not yet finished (and evaluate it with `eval_suites`, if any), then write
    results.md, results.csv and the plots into `out`. `common`: where the data is and what runs it (data,
    tokenizer, device, dtype); `every_run`: model and train settings applied to every run, under its grid values;
    `eval_settings`: EvalConfig values for every evaluation; `data_root` reaches the `talelab eval` children;
    `axis_metrics`: results columns drawn against each grid key."""
    limits = parse_budget(budget)
    runs = plan_runs(presets, grid, base_preset, every_run)
    out = Path(out)
    evaluations = {name: eval_config(out / name, eval_suites, eval_settings or {}, common.get("device", "auto"))
                   for name, _, _ in runs} if eval_suites else {}
    check_axis_metrics(axis_metrics, COLUMNS, requested_suites(eval_suites) if eval_suites else [])
    axes = with_every_key(grid_runs(grid, base_preset), runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, preset, overrides) in enumerate(runs, start=1):
        step, run_dir = f"[{i}/{len(runs)}] {name}", out / name
        settings = run_settings(run_dir, preset, overrides, common, limits)
        set_aside_if_changed(run_dir, settings, out, log, step)
        done = run_dir / "result.json"
        worked = not done.is_file()
        if worked:
            log(f"{step}: training ({budget})")
            row = run_configuration(run_dir, settings)
            done.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
            log(f"{step}: val loss {row['val_loss']}, {row['val_bpb']} bits per byte, {row['parameters']:,} "
                f"parameters, {row['tokens_per_s']:,} tokens/s")
        else:  # finished in an earlier session with these settings: not redone
            row = json.loads(done.read_text(encoding="utf-8"))
            log(f"{step}: done earlier")
        if name in evaluations:
            figures = finished_evaluation(evaluations[name], eval_suites)
            if figures is None:
                log(f"{step}: evaluating ({eval_suites})")
                figures = evaluate_run(evaluations[name], data_root)
                log(f"{step}: evaluated, {run_dir / 'eval' / 'report.md'}")
                worked = True
            row = {**row, "eval": figures}
        rows.append(row)
        if worked:
            write_results(rows, out, budget, axes, axis_metrics)
    write_results(rows, out, budget, axes, axis_metrics)
    return rows


def check_axis_metrics(metrics, columns: list[str], sections: list[str] = ()) -> None:
    """A one-line ConfigError for a metric that is no results column. `sections`: eval suites whose figures
    ('probes.accuracy.factual') are columns still to come, accepted for now by their section's name."""
    for metric in metrics:
        if metric not in columns[1:] and metric.partition(".")[0] not in sections:  # [1:]: a run's name is no metric
            raise ConfigError(f"--axis-metrics: '{metric}' is not a column of results.csv (columns: "
                              f"{', '.join(columns[1:])})")


def write_results(rows: list[dict], out: Path, budget: str, axes: dict[str, dict], axis_metrics) -> None:
    """results.csv and results.md (best first), one column per eval headline figure that any run has, and the plots;
    loss curves run against tokens seen when the budget is tokens (every run ends at the same x) and against
    training time when it is time. `axes`: {run name: its grid values}."""
    columns = COLUMNS + list(dict.fromkeys(k for r in rows for k in r.get("eval", {}) if k not in COLUMNS))
    check_axis_metrics(axis_metrics, columns)
    table = [{**r.get("eval", {}), **r} for r in rows]  # the sweep's own parameter count over the report's
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    figures = columns[len(COLUMNS):]
    axis_panels = metrics_by_axis(table, axes, axis_metrics) if axis_metrics else {}
    graded = loss_against_grades(table, figures)
    plots = ["bpb_vs_parameters.png", "loss_curves.png", "train_loss_curves.png",
             *(f"axis_{key}.png" for key in axis_panels), *(["loss_vs_judge.png"] if graded else [])]
    lines = [f"# Sweep results (budget {budget} per run)", "",
             "| run | parameters | tokens seen | wall time (s) | tokens/s | val loss | val bits/byte | peak RSS (MB) |"
             + "".join(f" {figure} |" for figure in figures), "|---|---:|---:|---:|---:|---:|---:|---:|"
             + "---:|" * len(figures)]
    for r in sorted(table, key=lambda r: r["val_loss"]):
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['tokens_seen']:,} | {r['wall_time_s']} | "
                     f"{r['tokens_per_s']:,} | {r['val_loss']} | {r['val_bpb']} | {r['peak_rss_mb']} |"
                     + "".join(f" {table_cell(r.get(figure))} |" for figure in figures))
    lines += ["", "Sorted by validation loss (windows of the prepared val split); bits per byte make runs with "
              "different tokenizers comparable." + (" Columns after peak RSS: headline figures of each run's "
                                                    "RUN/eval/report.md." if figures else ""),
              f"Plots: {', '.join(plots)}."]
    if graded:
        lines += ["", f"Validation loss against the judge's mean grades, Spearman correlation over {graded[2]} runs: "
                  + ", ".join(f"{name} {rho:+.2f}" for name, rho in graded[1].items()) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bits_per_byte_against_parameters({r["name"]: (r["parameters"], r["val_bpb"]) for r in rows},
                                     out / "bpb_vs_parameters.png")
    by_tokens = "max_tokens" in parse_budget(budget)
    xlabel = "tokens seen" if by_tokens else "training time (s)"
    curves = loss_curves(rows, out, by_tokens, ("val_loss", "loss"))
    validation_loss_curves(curves["val_loss"], out / "loss_curves.png", xlabel)
    validation_loss_curves(curves["loss"], out / "train_loss_curves.png", xlabel, ylabel="training loss (nats/token)")
    for key, (xs, panels) in axis_panels.items():
        metrics_against_axis(xs, panels, out / f"axis_{key}.png", key)
    if graded:
        metrics_against_axis(*graded[0], out / "loss_vs_judge.png", "validation loss (nats/token)")


def loss_against_grades(table: list[dict], figures: list[str]):
    """With judged runs (eval columns judge.categories.NAME.mean) and at least three of them: ((losses sorted, one
    panel per category titled with its Spearman correlation), {category: rho}, runs); else None."""
    grades = [f for f in figures if f.startswith("judge.categories.") and f.endswith(".mean")]
    judged = sorted((r for r in table if r.get(grades[0]) is not None), key=lambda r: r["val_loss"]) if grades else []
    if len(judged) < 3:
        return None
    # deferred: `talelab memory`'s measuring children import this module and must stay light
    from scipy.stats import spearmanr

    losses = [r["val_loss"] for r in judged]
    rhos = {g.split(".")[2]: float(spearmanr(losses, [r.get(g) for r in judged]).statistic) for g in grades}
    panels = {f"{name} (Spearman {rho:+.2f})": {"": [r.get(g) for r in judged]}
              for (name, rho), g in zip(rhos.items(), grades)}
    return (losses, panels), rhos, len(judged)


def table_cell(value) -> str:
    """An eval figure in results.md: 4 decimals, like the losses; empty where a run lacks it."""
    return "" if value is None else str(round(value, 4) if isinstance(value, float) else value)


def loss_curves(rows: list[dict], out: Path, by_tokens: bool,
                keys: tuple[str, ...]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{key: each run's `key` figures} from its metrics.jsonl, read once for all keys ("val_loss": validation, "loss":
    training), against tokens seen (steps times the run's tokens per step) or against training seconds."""
    curves: dict[str, dict] = {key: {} for key in keys}
    for r in rows:
        lines = (out / r["name"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        tokens_per_step = r["tokens_seen"] / max(t["step"] for t in records if "loss" in t)
        for key in keys:
            chosen = [v for v in records if key in v]
            x = [v["step"] * tokens_per_step for v in chosen] if by_tokens else [v["elapsed_s"] for v in chosen]
            curves[key][r["name"]] = (x, [v[key] for v in chosen])
    return curves


def metrics_by_axis(table: list[dict], axes: dict[str, dict], metrics) -> dict[str, tuple[list, dict]]:
    """{grid key: (its values sorted, {metric: {group: a value or None per key value}})} for every key that takes
    several values among the grid's runs; a group is one combination of the other grid keys, labelled by it."""
    grid_rows = [(axes[r["name"]], r) for r in table if r["name"] in axes]  # preset runs have no grid values
    by_axis = {}
    for key in dict.fromkeys(k for values, _ in grid_rows for k in values):
        xs = sorted({values[key] for values, _ in grid_rows if key in values})
        if len(xs) < 2:
            continue
        groups: dict[str, dict] = {}
        for values, row in grid_rows:
            if key in values:
                label = ", ".join(f"{k}={v}" for k, v in values.items() if k != key)
                groups.setdefault(label, {})[values[key]] = row
        by_axis[key] = (xs, {metric: {label: [rows_at[x].get(metric) if x in rows_at else None for x in xs]
                                      for label, rows_at in groups.items()} for metric in metrics})
    return by_axis

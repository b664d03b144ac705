"""Experiment tracking (`--report-to`): every record a run writes to metrics.jsonl also goes, with the same keys and
step, to TensorBoard, Weights & Biases, MLflow or Trackio, and the run's resolved config goes there once.

train, sweep (each run), finetune, trials (each trial) and dpo all log through `open_tracker`, so every tracker
shows the figures of metrics.jsonl and nothing else. A run is named after its directory.

Resuming continues the same series: TensorBoard discards the points past the checkpoint (`purge_step`) and gets
them again; the others cannot discard points, so a resumed run skips the steps they already hold (the same figures:
talelab resumes bit for bit) and reopens the run whose id it kept in OUT/tracker.json.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from talelab.errors import ConfigError

PROJECT = "talelab"  # the wandb / mlflow experiment / trackio project every run logs under
RUN_ID_FILE = "tracker.json"


@dataclass
class Tracker:
    """Where records go besides metrics.jsonl: `write(step, figures)` and `close()` of the chosen tracker."""
    write: Callable[[int, dict], None]
    close: Callable[[], None]
    skip_through: int = -1  # steps the tracker already holds from before a resume

    def log(self, record: dict) -> None:
        """One metrics.jsonl record: its numbers at its step."""
        step = record["step"]
        figures = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step > self.skip_through and figures:
            self.write(step, figures)


NO_TRACKER = Tracker(write=lambda step, figures: None, close=lambda: None)


def open_tracker(choice: str, run_dir: Path, config: dict, resumed_step: int | None = None,
                 logged_through: int | None = None) -> Tracker:
    """The tracker `choice` names, opened for `run_dir` with `config` logged. When resuming from the checkpoint of
    `resumed_step`, `logged_through` is the last step the interrupted session recorded."""
    if choice == "none":
        return NO_TRACKER
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if choice == "tensorboard":
        return open_tensorboard(run_dir, config, resumed_step)
    opener = {"wandb": open_wandb, "mlflow": open_mlflow, "trackio": open_trackio}[choice]
    run_id = saved_run_id(run_dir, choice) if resumed_step is not None else None
    tracker = opener(import_tracker(choice), run_dir, config, run_id)
    if run_id is not None:  # the reopened run holds what the earlier sessions logged
        tracker.skip_through = max(resumed_step, logged_through if logged_through is not None else -1)
    return tracker


def not_installed(package: str) -> ConfigError:
    return ConfigError(f"--report-to {package}: the {package} package is not installed (pip install {package})")


def require_package(choice: str) -> None:
    """Fail on a tracker whose package is missing when the config is made, before a run does any work."""
    if choice not in ("none", "tensorboard") and importlib.util.find_spec(choice) is None:
        raise not_installed(choice)


def import_tracker(package: str):
    try:
        return importlib.import_module(package)  # imported only when chosen: none of them is a dependency
    except ImportError:
        raise not_installed(package) from None


def config_text(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def flat(config: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys (model.d_model): the form of MLflow's parameters."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def saved_run_id(run_dir: Path, choice: str) -> str | None:
    path = run_dir / RUN_ID_FILE
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return saved.get("run_id") if saved.get("tracker") == choice else None


def save_run_id(run_dir: Path, choice: str, run_id: str) -> None:
    (run_dir / RUN_ID_FILE).write_text(json.dumps({"tracker": choice, "run_id": run_id}) + "\n", encoding="utf-8")


def open_tensorboard(run_dir: Path, config: dict, resumed_step: int | None) -> Tracker:
    """Event files in run_dir/tensorboard; the config as text at the first step this session writes."""
    from torch.utils.tensorboard import SummaryWriter  # loaded only when chosen: it pulls tensorboard and protobuf

    first = 0 if resumed_step is None else resumed_step + 1
    # purge_step: readers drop the points earlier sessions wrote from `first` on, those past the checkpoint (this
    # session logs them again) or, for a new run, all of an earlier run in the same directory
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first)
    writer.add_text("config", "```yaml\n" + config_text(config) + "```", global_step=first)
    writer.flush()

    def write(step: int, figures: dict) -> None:
        for key, value in figures.items():
            writer.add_scalar(key, value, step)

    return Tracker(write=write, close=writer.close)


def open_wandb(wandb, run_dir: Path, config: dict, run_id: str | None) -> Tracker:
    """A wandb run (files in run_dir/wandb; WANDB_MODE=offline keeps them local), resumed by its kept id."""
    resumed = {"id": run_id, "resume": "allow"} if run_id else {}
    run = wandb.init(project=PROJECT, name=run_dir.name, dir=str(run_dir), config=config, **resumed)
    save_run_id(run_dir, "wandb", run.id)
    return Tracker(write=lambda step, figures: run.log(figures, step=step), close=run.finish)


def open_mlflow(mlflow, run_dir: Path, config: dict, run_id: str | None) -> Tracker:
    """An MLflow run in experiment 'talelab' of the tracking URI (MLFLOW_TRACKING_URI, else MLflow's default)."""
    mlflow.set_experiment(PROJECT)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_dir.name)
    if run_id is None:  # MLflow's parameters cannot change once logged: the config of the run's first session
        mlflow.log_params(flat(config))
        mlflow.log_text(config_text(config), "config.yaml")
    save_run_id(run_dir, "mlflow", run.info.run_id)
    return Tracker(write=lambda step, figures: mlflow.log_metrics(figures, step=step), close=mlflow.end_run)


def open_trackio(trackio, run_dir: Path, config: dict, run_id: str | None) -> Tracker:
    """A Trackio run (a local SQLite store unless TRACKIO_SPACE_ID says otherwise), resumed by name."""
    trackio.init(project=PROJECT, name=run_id or run_dir.name, config=config,
                 resume="allow" if run_id else "never")
    save_run_id(run_dir, "trackio", run_id or run_dir.name)
    return Tracker(write=lambda step, figures: trackio.log(figures, step=step), close=trackio.finish)

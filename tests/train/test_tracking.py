"""`--report-to`: the tracker holds the figures of metrics.jsonl at the same steps, and the resolved config, for
train, sweep, finetune and dpo; a resumed run continues the same series; a tracker whose package is missing is a
one-line error. TensorBoard event files are read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from talelab.cli import main
from talelab.config import FinetuneConfig, PreferenceConfig, TrainConfig
from talelab.errors import ConfigError
from talelab.finetune.dpo import run_dpo
from talelab.finetune.sft import finetune
from talelab.train.loop import train

QUIET = dict(log=lambda *_: None)


def events(run_dir) -> EventAccumulator:
    reader = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    return reader


def series(reader: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in reader.Scalars(tag)]


def recorded(run_dir, key: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl record with `key`, as float32: the precision TensorBoard keeps."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], float(np.float32(r[key]))) for r in records if key in r]


def config_texts(reader: EventAccumulator) -> list[str]:
    return [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in reader.Tensors("config/text_summary")]


@pytest.mark.slow
def test_tensorboard_from_the_command_line_holds_the_losses_and_config_of_metrics_jsonl(prepared, bpe_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(prepared), "--tokenizer", str(bpe_dir), "--out", str(out),
                 "--device", "cpu", "--no-progress", "--report-to", "tensorboard"]) == 0
    reader = events(out)
    for key in ("loss", "val_loss", "val_bpb", "lr"):
        assert series(reader, key) == recorded(out, key), key
    assert [s for s, _ in series(reader, "loss")] == [10, 20] and [s for s, _ in series(reader, "val_loss")] == [10, 20]
    (text,) = config_texts(reader)
    assert "d_model: 32" in text and "report_to: tensorboard" in text and "max_steps: 20" in text


@pytest.mark.slow
def test_a_resumed_run_continues_the_tensorboard_series_without_duplicates(tiny_configs, tmp_path):
    model_cfg, straight = tiny_configs(tmp_path / "straight", max_steps=20, log_interval=5, report_to="tensorboard")
    train(model_cfg, straight, **QUIET)
    # the interrupted run logged steps 15 and 20 after its checkpoint at 10, then was killed before saving again
    _, first = tiny_configs(tmp_path / "split", max_steps=20, log_interval=5, report_to="tensorboard")
    train(model_cfg, first, **QUIET)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step-00000020")
    (tmp_path / "split" / "latest").write_text("checkpoints/step-00000010\n")
    train(model_cfg, first, resume=True, **QUIET)
    reader = events(tmp_path / "split")
    for key in ("loss", "val_loss"):
        steps = [s for s, _ in series(reader, key)]
        assert steps == sorted(set(steps)), key  # each step once
        assert series(reader, key) == recorded(tmp_path / "split", key) == recorded(tmp_path / "straight", key)
    assert [s for s, _ in series(reader, "loss")] == [5, 10, 15, 20]
    assert len(config_texts(reader)) == 2  # each session's config, at its first step


@pytest.mark.slow
def test_finetune_stopped_and_resumed_logs_the_loss_series_of_metrics_jsonl(stories260k_hf, prepared, tmp_path):
    settings = dict(base=str(stories260k_hf), task="lm", data=str(prepared / "train.jsonl"), out=str(tmp_path / "ft"),
                    eval_fraction=0.05, max_steps=4, batch_size=4, max_length=64, logging_steps=1, save_steps=2,
                    samples=0, progress=False, report_to="tensorboard")
    out = tmp_path / "ft"
    finetune(FinetuneConfig(**settings, stop_at_step=2), **QUIET)
    finetune(FinetuneConfig(**settings, resume=True), **QUIET)
    reader = events(out)
    assert series(reader, "loss") == recorded(out, "loss") and [s for s, _ in series(reader, "loss")] == [1, 2, 3, 4]
    # held out before training, when the first session stopped, and at the end
    assert series(reader, "eval_loss") == recorded(out, "eval_loss") and [s for s, _ in series(reader, "eval_loss")] \
        == [0, 2, 4]
    assert any("task: lm" in text and "report_to: tensorboard" in text for text in config_texts(reader))


@pytest.mark.slow
def test_dpo_logs_the_losses_and_reward_margins_of_metrics_jsonl(stories260k_hf, prepared, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    main(["prefs", "build", "--data", str(prepared), "--out", str(pairs), "--max-pairs", "20", "--no-progress"])
    out = tmp_path / "dpo"
    run_dpo(PreferenceConfig(base=str(stories260k_hf), data=str(pairs), out=str(out), batch_size=4, max_length=96,
                             heldout_fraction=0.2, eval_steps=2, progress=False, report_to="tensorboard"), **QUIET)
    reader = events(out)
    for key in ("loss", "eval_loss", "eval_rewards/margins"):
        assert series(reader, key) == recorded(out, key) != [], key
    assert "beta: 0.1" in config_texts(reader)[0]


@pytest.mark.slow
def test_each_trial_logs_to_its_own_tensorboard_folder(stories260k_hf, tmp_path):
    out = tmp_path / "trials"
    assert main(["trials", "--grid", "rank=2,4", "--out", str(out), "--base", str(stories260k_hf), "--task",
                 "instruct", "--data", "data/instruct/dolly-subset.jsonl", "--max-steps", "2", "--batch-size", "4",
                 "--max-length", "128", "--logging-steps", "1", "--samples", "0", "--no-progress",
                 "--report-to", "tensorboard"]) == 0
    for trial in ("rank=2", "rank=4"):
        reader = events(out / trial)
        assert series(reader, "loss") == recorded(out / trial, "loss") and len(series(reader, "loss")) == 2
        assert f"rank: {trial[-1]}" in config_texts(reader)[0]


@pytest.mark.slow
def test_each_sweep_run_logs_to_its_own_tensorboard_folder(prepared, bpe_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", "d_model=32,48", "--base-preset", "tiny", "--budget", "2k", "--data",
                 str(prepared), "--tokenizer", str(bpe_dir), "--out", str(out), "--device", "cpu",
                 "--report-to", "tensorboard"]) == 0
    for run in ("tiny-d_model32", "tiny-d_model48"):
        reader = events(out / run)
        assert series(reader, "loss") == recorded(out / run, "loss") != []
        assert f"d_model: {run[-2:]}" in config_texts(reader)[0]


def test_a_tracker_whose_package_is_missing_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed, whether or not it is
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install wandb" in err
    assert not (tmp_path / "run").exists()  # refused before any work
    monkeypatch.setitem(sys.modules, "mlflow", None)
    for make in (lambda: TrainConfig(report_to="mlflow"), lambda: FinetuneConfig(base="b", report_to="mlflow"),
                 lambda: PreferenceConfig(base="b", data="d", report_to="mlflow")):
        with pytest.raises(ConfigError, match=r"pip install mlflow"):
            make()


def test_an_unknown_tracker_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="tensorboard, wandb, mlflow, trackio"):
        TrainConfig(report_to="comet")

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from talelab.config import ModelConfig, TrainConfig
from talelab.data.shards import load_shard, pretokenize
from talelab.devices import own_peak_rss_mb
from talelab.errors import ConfigError, InputError, MismatchError, TrainingDiverged
from talelab.models.storage import load_model, resolve_model_dir
from talelab.models.transformer import Transformer
from talelab.tokenizer import load_tokenizer
from talelab.train.distributed import compile_for_training
from talelab.train.loop import epoch_steps, token_steps, train
from talelab.train.optim import lr_multiplier

QUIET = dict(log=lambda *_: None)


def weights(run_dir):
    return load_file(str(resolve_model_dir(run_dir) / "model.safetensors"))


def test_tiny_run_writes_checkpoint_metrics_and_loss_curve(tiny_run):
    assert (tiny_run / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]  # it learned something
    assert any("val_bpb" in r for r in records)
    # the process's own peak memory so far (it trained in this one), never falling
    peaks = [r["peak_rss_mb"] for r in records if "loss" in r]
    assert peaks == sorted(peaks) and 50 < peaks[-1] <= own_peak_rss_mb() + 1
    assert (tiny_run / "metrics.csv").read_text().startswith("step,")
    model, tokenizer, raw = load_model(tiny_run)
    assert raw["step"] == 20 and model.config.vocab_size == tokenizer.vocab_size


@pytest.mark.slow
def test_resume_after_stop_gives_bitwise_identical_weights(tiny_configs, tmp_path):
    model_cfg, straight = tiny_configs(tmp_path / "straight", max_steps=20, model={"dropout": 0.1})
    train(model_cfg, straight, **QUIET)
    _, first_half = tiny_configs(tmp_path / "split", max_steps=10, schedule_steps=20, model={"dropout": 0.1})
    train(model_cfg, first_half, **QUIET)
    _, second_half = tiny_configs(tmp_path / "split", max_steps=20, model={"dropout": 0.1})
    train(model_cfg, second_half, resume=True, **QUIET)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_epochs_train_the_steps_that_draw_that_many_passes_over_the_training_tokens(tiny_configs, prepared, bpe_dir,
                                                                                   tmp_path):
    train_tokens = len(load_shard(pretokenize(prepared, load_tokenizer(bpe_dir), progress=False), "train").tokens)
    per_step = 8 * 64  # the tiny preset: batch_size 8 windows of context_length 64 tokens, no accumulation
    steps = math.ceil(0.05 * train_tokens / per_step)
    assert 1 < steps < 20  # neither the preset's max_steps (20) nor the one given below
    model_cfg, cfg = tiny_configs(tmp_path / "epochs", epochs=0.05, max_steps=3, schedule_steps=1000)
    logged = []
    assert train(model_cfg, cfg, log=logged.append)["step"] == steps
    assert f"epochs 0.05: {steps} steps of 512 tokens over {train_tokens:,} training tokens (this replaces " \
           "max_steps)" in logged
    # resuming with a larger budget continues to its steps exactly as a run given it from the start
    _, more = tiny_configs(tmp_path / "epochs", epochs=0.1, schedule_steps=1000)
    assert train(model_cfg, more, resume=True, **QUIET)["step"] == math.ceil(0.1 * train_tokens / per_step)
    _, straight = tiny_configs(tmp_path / "straight", epochs=0.1, schedule_steps=1000)
    train(model_cfg, straight, **QUIET)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "epochs")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_steps_round_up_to_whole_steps_without_float_noise():
    assert epoch_steps(1.0, 1000, 100) == 10
    assert epoch_steps(0.7, 1000, 100) == 7  # 0.7 * 1000 is 700.0000000000001 in floating point
    assert epoch_steps(1.0, 1001, 100) == 11
    assert epoch_steps(1e-9, 1000, 100) == 1
    with pytest.raises(ConfigError, match="epochs: -1"):
        TrainConfig(epochs=-1)


def test_a_token_budget_trains_the_whole_steps_it_pays_for(tiny_configs, tmp_path):
    assert token_steps(4096, 512) == 8 and token_steps(4095, 512) == 7 and token_steps(100, 512) == 1
    model_cfg, cfg = tiny_configs(tmp_path / "tokens", max_tokens=1300, max_steps=1000)  # 1,300 // (8 x 64) = 2
    logged = []
    assert train(model_cfg, cfg, log=logged.append)["step"] == 2
    assert "max_tokens 1,300: 2 steps of 512 tokens (this replaces max_steps)" in logged
    for bad, message in ((dict(max_tokens=-1), "max_tokens: -1"), (dict(max_tokens=10, epochs=1.0), "not both")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)


@pytest.mark.slow
def test_kill_during_training_leaves_a_loadable_checkpoint_and_resume_finishes(tiny_configs, tmp_path, prepared,
                                                                                 bpe_dir):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "talelab", "train", "--preset", "tiny", "--data", str(prepared), "--tokenizer",
            str(bpe_dir), "--out", str(out), "--max-steps", "100000", "--checkpoint-interval", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "latest").is_file():
        time.sleep(0.2)
    time.sleep(1.5)  # let it write several more checkpoints, then kill it mid-stride
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    model, _, raw = load_model(out)  # the pointer names a complete checkpoint
    killed_at = raw["step"]
    assert killed_at >= 1
    model_cfg, cfg = tiny_configs(out, max_steps=killed_at + 3, schedule_steps=100000, checkpoint_interval=1)
    summary = train(model_cfg, cfg, resume=True, **QUIET)
    assert summary["step"] == killed_at + 3


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_configs, tmp_path):
    model_cfg, healthy = tiny_configs(tmp_path / "nan", max_steps=4, schedule_steps=50)
    train(model_cfg, healthy, **QUIET)
    _, explosive = tiny_configs(tmp_path / "nan", max_steps=50, lr=1e38, warmup_steps=0, grad_clip=0.0,
                                checkpoint_interval=1)
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as stopped:
        train(model_cfg, explosive, resume=True, **QUIET)
    kept = resolve_model_dir(tmp_path / "nan")
    assert f"{kept} is kept" in str(stopped.value)
    model, _, raw = load_model(kept)
    assert raw["step"] >= 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_new_run_refuses_to_overwrite_an_existing_one(tiny_configs, tiny_run):
    model_cfg, cfg = tiny_configs(tiny_run)
    with pytest.raises(ConfigError, match="--resume"):
        train(model_cfg, cfg, **QUIET)


def test_resume_with_another_model_shape_is_refused(tiny_configs, tiny_run):
    model_cfg, cfg = tiny_configs(tiny_run, model={"d_model": 64}, max_steps=25)
    with pytest.raises(MismatchError, match="d_model"):
        train(model_cfg, cfg, resume=True, **QUIET)


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused(tiny_configs, tmp_path):
    model_cfg, cfg = tiny_configs(tmp_path / "v", model={"vocab_size": 100})
    with pytest.raises(MismatchError, match="tokenizer has 512 tokens"):
        train(model_cfg, cfg, **QUIET)


def test_context_longer_than_the_training_data_is_refused(tiny_configs, tmp_path):
    model_cfg, cfg = tiny_configs(tmp_path / "ctx", model={"context_length": 10_000_000})
    with pytest.raises(InputError, match="fewer than one window"):
        train(model_cfg, cfg, **QUIET)


def test_schedules_follow_their_definitions():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_multiplier(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(10, 0.0, cfg) == pytest.approx(1.0)
    assert lr_multiplier(50, 0.5, cfg) == pytest.approx(0.55)
    assert lr_multiplier(99, 1.0, cfg) == pytest.approx(0.1)
    step = TrainConfig(warmup_steps=0, schedule="step", step_size=100, gamma=0.5)
    assert [lr_multiplier(s, 0, step) for s in (0, 99, 100, 250)] == [1.0, 1.0, 0.5, 0.25]
    wsd = TrainConfig(warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_multiplier(1, p, wsd) for p in (0.5, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 0.5, 0.0])


@pytest.mark.slow
def test_a_compiled_run_compiles_each_block_and_trains_as_the_eager_one(tiny_configs, tmp_path):
    """--compile compiles the blocks in place (one graph for all of them, so a cold start compiles one block): the
    losses are the eager run's up to kernel rounding, and the checkpoint's weights carry the same names."""
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, context_length=16))
    assert compile_for_training(model) is model
    assert all(block._compiled_call_impl is not None for block in model.blocks) and model._compiled_call_impl is None

    runs = {}
    for name, compile in (("eager", False), ("compiled", True)):
        model_cfg, config = tiny_configs(tmp_path / name, max_steps=4, compile=compile)
        train(model_cfg, config, **QUIET)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = ([r["loss"] for r in records if "loss" in r], weights(tmp_path / name))
    (eager_losses, eager_weights), (compiled_losses, compiled_weights) = runs["eager"], runs["compiled"]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled_weights.keys() == eager_weights.keys()

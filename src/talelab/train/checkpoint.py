"""Checkpoints that survive a kill: each one is a directory published by rename, then named in `latest`.

A checkpoint is a model directory (weights, config, tokenizer) plus trainer_state.pt: optimizer, grad scaler,
RNG states and the data position. The `latest` pointer is replaced atomically only after the directory is
complete, and older checkpoints are pruned only after that, so a kill at any moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from talelab.errors import InputError
from talelab.atomic import atomic_directory, write_text_atomic
from talelab.models import build_model
from talelab.models.storage import LATEST_POINTER, read_config, resolve_model_dir, save_model

TRAINER_STATE = "trainer_state.pt"
CHECKPOINTS = "checkpoints"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, extra: dict, keep: int) -> Path:
    name = f"step-{step:08d}"
    final = run_dir / CHECKPOINTS / name
    with atomic_directory(final) as tmp:
        save_model(tmp, model, tokenizer, extra={**extra, "step": step})
        torch.save(trainer_state, tmp / TRAINER_STATE)
    write_text_atomic(run_dir / LATEST_POINTER, f"{CHECKPOINTS}/{name}\n")
    for old in sorted((run_dir / CHECKPOINTS).glob("step-*"))[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def unsharded_copy(model, weights: dict):
    """A plain model holding `weights` (whole tensors gathered from FSDP shards), to save as any model is saved.
    Built on the meta device and given the tensors themselves, so no second set of weights is allocated."""
    with torch.device("meta"):
        copy = build_model(model.config)
    copy.load_state_dict(weights, assign=True)
    if copy.config.tie_embeddings:  # assign gave lm_head a tensor of its own; tie it again as build_model does
        copy.lm_head.weight = copy.embed.weight
    return copy


def latest_checkpoint(run_dir: Path) -> Path | None:
    return resolve_model_dir(run_dir) if (run_dir / LATEST_POINTER).is_file() else None


def load_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        raise InputError(f"{path}: missing; this checkpoint cannot be resumed (it holds weights only)")
    return torch.load(path, map_location="cpu", weights_only=True)


def saved_configuration(run_dir: Path) -> dict:
    """The model and train sections a run's latest checkpoint was made with, to resume it without restating them."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise InputError(f"{run_dir}: nothing to resume (no 'latest' checkpoint pointer)")
    saved = read_config(checkpoint)
    return {"model": saved["model"], "train": saved.get("train", {})}

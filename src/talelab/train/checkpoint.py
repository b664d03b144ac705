"""Checkpoints that survive a kill: each one is a directory published by rename, then named in `latest`.

A checkpoint is a model directory (weights, config, tokenizer) plus trainer_state.pt: optimizer, grad scaler,
RNG states and the data position. The `latest` pointer is replaced atomically only after the directory is
complete, and older checkpoints are pruned only after that, so a kill at any moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from talelab.errors import ConfigError, InputError, TrainingDiverged
from talelab.atomic import atomic_directory, write_text_atomic
from talelab.models import build_model
from talelab.models.storage import LATEST_POINTER, read_config, resolve_model_dir, save_model
from talelab.train.distributed import (Ranks, all_finite, gathered_state, load_optimizer_state, rank_rng_states,
                                      seed_rank)

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


def checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a resumed run continues from (None for a new run); refuses a resume with nothing to resume and a
    new run over an old one."""
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        raise InputError(f"{run_dir}: nothing to resume (no 'latest' checkpoint pointer)")
    if not resume and checkpoint is not None:
        raise ConfigError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    return checkpoint


def saved_configuration(run_dir: Path) -> dict:
    """The model and train sections a run's latest checkpoint was made with, to resume it without restating them."""
    saved = read_config(checkpoint_to_resume(run_dir, resume=True))
    return {"model": saved["model"], "train": saved.get("train", {})}


@dataclass
class TrainerState:
    """What decides what training does next, all of it in every checkpoint: weights, optimizer moments, grad scaler,
    the data generator's position, step and elapsed time (and each rank's RNG streams, read when saving)."""
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]  # AdamW, and Muon when configured
    scaler: torch.amp.GradScaler
    data_rng: torch.Generator
    step: int = 0
    elapsed: float = 0.0


def resume_from(state: TrainerState, checkpoint: Path, seed: int, ranks: Ranks) -> None:
    """Put `state` (its model already holding the checkpoint's weights) and every rank's RNG streams where the
    checkpoint left them."""
    saved = load_trainer_state(checkpoint)
    load_optimizer_state(state.model, state.optimizers, saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.data_rng.set_state(saved["data_rng"])
    state.step, state.elapsed = saved["step"], saved["elapsed"]
    seed_rank(seed, ranks, saved.get("rank_rngs") or [(saved["torch_rng"], saved.get("cuda_rng"))], state.step)


def save_resumable(state: TrainerState, run_dir: Path, ranks: Ranks, tokenizer, extra: dict, keep: int) -> Path | None:
    """A checkpoint of `state` at its step. Every rank takes part (gathering FSDP shards is collective); rank 0 writes
    and returns the checkpoint, the others None."""
    if not all_finite(state.model, ranks):  # never publish a broken checkpoint
        raise diverged(run_dir, f"weights stopped being finite by step {state.step}")
    weights, optimizer_state = gathered_state(state.model, state.optimizers)
    rngs = rank_rng_states(ranks)
    if not ranks.is_main:
        return None
    trainer_state = {"optimizer": optimizer_state, "scaler": state.scaler.state_dict(),
                     "data_rng": state.data_rng.get_state(), "torch_rng": rngs[0][0], "cuda_rng": rngs[0][1],
                     "rank_rngs": rngs, "step": state.step, "elapsed": state.elapsed}
    plain = unsharded_copy(state.model, weights) if weights is not None else state.model
    return save_checkpoint(run_dir, state.step, plain, tokenizer, trainer_state, extra, keep)


def diverged(run_dir: Path, what: str) -> TrainingDiverged:
    """The error that stops a run whose loss or weights stopped being finite, naming the checkpoint that is kept."""
    good = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint had been written yet"
    return TrainingDiverged(f"{run_dir}: {what}; training stopped, {kept} (try a lower --lr or --grad-clip)")

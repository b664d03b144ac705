"""The training loop: random windows of the token stream, AdamW, schedules, evaluation, exact resume.

Everything that decides what happens next (weights, optimizer moments, RNG streams, step, elapsed time) is in a
checkpoint, so `resume=True` continues bit for bit where the run stopped.

`train` reads in order: `set_up` (processes, data, model, optimizer, the resumed state), then `run_steps`, each step a
`train_step` over the batches of `batch_source`, with metrics logged and checkpoints saved on their intervals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from talelab.config import ModelConfig, TrainConfig
from talelab.data.shards import Shard, load_shard, pretokenize
from talelab.devices import autocast_context, check_compiler, pick_device, training_dtype
from talelab.errors import ConfigError, InputError, MismatchError
from talelab.models import build_model
from talelab.models.storage import check_vocabulary, load_weights, read_config
from talelab.tokenizer import Tokenizer, load_tokenizer
from talelab.train.batches import batch_source
from talelab.train.checkpoint import (TrainerState, checkpoint_to_resume, diverged, latest_checkpoint, resume_from,
                                      save_resumable)
from talelab.train.distributed import Ranks, gradient_sync, held_parameters, is_sharded, join, leave, seed_rank, wrap
from talelab.train.metrics import Metrics, fixed_windows, windowed_loss
from talelab.train.objectives import next_token_loss
from talelab.train.optim import lr_multiplier, make_optimizers, set_learning_rates


def epoch_steps(epochs: float, num_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps that draw `epochs` times the split's `num_tokens` (at least one step)."""
    wanted = round(epochs * num_tokens)  # rounded first: 0.7 * 1000 is 700.0000000000001, which is not 8 steps of 100
    return max(1, -(-wanted // tokens_per_step))


def token_steps(tokens: int, tokens_per_step: int) -> int:
    """The whole optimizer steps a budget of `tokens` tokens pays for (at least one): no run draws more than its
    budget, which keeps the runs of a sweep comparable."""
    return max(1, tokens // tokens_per_step)


def pretokenize_once(config: TrainConfig, tokenizer, ranks: Ranks) -> Path:
    """The shard directory, written by rank 0 while the other ranks wait: under torchrun every rank would otherwise
    write the same temporary files at once. A failure on rank 0 stops every rank instead of leaving them waiting."""
    failure = None
    if ranks.is_main:
        try:
            pretokenize(config.data, tokenizer, progress=config.progress)
        except Exception as e:  # re-raised below, once the other ranks know
            failure = e
    # all ranks meet here (the average is the barrier) and learn whether rank 0 succeeded
    if float(ranks.mean(torch.tensor(float(failure is None), device=ranks.device))) < 1:
        raise failure or InputError(f"{config.data}: rank 0 could not pretokenize the prepared data (its error is "
                                    f"above)")
    return pretokenize(config.data, tokenizer, progress=False)  # now only finds the files rank 0 wrote


@dataclasses.dataclass
class Run:
    """A training run as `set_up` leaves it: what stays fixed while it trains, and the `state` its checkpoints hold."""
    model_config: ModelConfig
    config: TrainConfig  # as trained: the dtype in use, max_steps from epochs
    ranks: Ranks
    autocast: contextlib.AbstractContextManager
    tokenizer: Tokenizer
    train_shard: Shard
    val_shard: Shard | None
    run_dir: Path
    parameters: int
    tokens_per_step: int
    forward: Callable
    state: TrainerState

    @property
    def max_seconds(self) -> float:
        return self.config.max_minutes * 60


def set_up(model_config: ModelConfig, config: TrainConfig, resume: bool, log) -> Run:
    """Join the other processes, load the data, fix the plan, then build the model and optimizer, in the state the
    run's latest checkpoint holds when resuming."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ranks = join(pick_device(config.device))
    device = ranks.device
    if config.compile:
        check_compiler(device)
    ranks.rows(config.batch_size)  # refuses a batch the processes cannot share equally before any work is done
    config = dataclasses.replace(config, dtype=training_dtype(config.dtype, device))  # the run records what it used
    autocast = autocast_context(device, config.dtype)
    tokenizer = load_tokenizer(config.tokenizer)
    shard_dir = pretokenize_once(config, tokenizer, ranks)
    train_shard = load_shard(shard_dir, "train", tokenizer)
    val_shard = load_shard(shard_dir, "val", tokenizer) if (shard_dir / "val.bin").is_file() else None

    if model_config.vocab_size == 0:
        model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    check_vocabulary(model_config, tokenizer, config.tokenizer)
    T = model_config.context_length
    if len(train_shard.tokens) < T + 2:
        raise InputError(f"{config.data}: only {len(train_shard.tokens)} training tokens, fewer than one window of "
                         f"context_length {T} + 1")
    tokens_per_step = config.batch_size * config.grad_accum * T
    # the steps are fixed here, so a resumed run (reading the same split) stops where planned
    if config.epochs > 0:
        config = dataclasses.replace(config, max_steps=epoch_steps(config.epochs, len(train_shard.tokens),
                                                                   tokens_per_step))
    elif config.max_tokens > 0:
        config = dataclasses.replace(config, max_steps=token_steps(config.max_tokens, tokens_per_step))

    run_dir = Path(config.out)
    checkpoint = checkpoint_to_resume(run_dir, resume)
    if checkpoint is not None:
        check_resumable(checkpoint, model_config, config.optimizer)
    ranks.barrier()  # every rank has checked before rank 0 writes anything
    run_dir.mkdir(parents=True, exist_ok=True)
    model = initial_model(model_config, config, ranks, checkpoint)
    parameters = model.num_parameters()
    # under FSDP `model` itself is sharded here, so the optimizer is made afterwards, over this rank's slices
    forward = wrap(model, ranks, fsdp=config.fsdp, compile=config.compile, dtype=config.dtype)
    state = TrainerState(model, make_optimizers(model, config, device),
                         torch.amp.GradScaler(device.type, enabled=config.dtype == "float16"),
                         torch.Generator().manual_seed(config.seed))
    if checkpoint is not None:
        resume_from(state, checkpoint, config.seed, ranks)
        log(f"resuming {run_dir} from step {state.step}")
    else:
        seed_rank(config.seed, ranks)
    return Run(model_config=model_config, config=config, ranks=ranks, autocast=autocast, tokenizer=tokenizer,
               train_shard=train_shard, val_shard=val_shard, run_dir=run_dir, parameters=parameters,
               tokens_per_step=tokens_per_step, forward=forward, state=state)


def initial_model(model_config: ModelConfig, config: TrainConfig, ranks: Ranks, checkpoint: Path | None):
    """The model before it is wrapped for the processes: seeded new weights, or the weights of `checkpoint`."""
    torch.manual_seed(config.seed)
    # to be sharded, the whole model waits in CPU memory: fully_shard moves each rank's slices to the device
    model = build_model(model_config).to("cpu" if config.fsdp and ranks.world_size > 1 else ranks.device)
    if checkpoint is not None:
        load_weights(model, checkpoint / "model.safetensors")  # whole weights on every rank; FSDP then slices them
    return model


def check_resumable(checkpoint: Path, model_config: ModelConfig, optimizer: str) -> None:
    """Refuse to resume a checkpoint under another model shape or another optimizer. Another optimizer's moments
    would start from zero (silently, for the matrices Muon takes over from AdamW): a different run, not this one
    continued."""
    saved = read_config(checkpoint)
    if saved["model"] != dataclasses.asdict(model_config):
        changed = [k for k, v in dataclasses.asdict(model_config).items() if saved["model"].get(k) != v]
        raise MismatchError(f"{checkpoint}: checkpoint has another model shape ({', '.join(changed)} differ)")
    trained_with = saved.get("train", {}).get("optimizer", "adamw")  # runs from before Muon: AdamW
    if trained_with != optimizer:
        raise ConfigError(f"{checkpoint}: trained with optimizer {trained_with}, not {optimizer}; resume it with "
                          f"--optimizer {trained_with}, or start a new run in another --out")


def describe(run: Run, log) -> None:
    """The run's opening lines: model, data and device, and what epochs, max_tokens or a lone --fsdp process
    changed."""
    config, ranks, n_params = run.config, run.ranks, run.parameters
    log(f"model: {n_params:,} parameters ({n_params / 1e6:.2f}M), vocab {run.model_config.vocab_size}, context "
        f"{run.model_config.context_length}; train {len(run.train_shard.tokens):,} tokens; device {ranks.device}, "
        f"{config.dtype}"
        + (f"; {ranks.world_size} processes" if ranks.world_size > 1 else "")
        + (f" (FSDP: {held_parameters(run.state.model):,} parameters held by each)"
           if is_sharded(run.state.model) else ""))
    if config.epochs > 0:
        log(f"epochs {config.epochs:g}: {config.max_steps:,} steps of {run.tokens_per_step:,} tokens over "
            f"{len(run.train_shard.tokens):,} training tokens (this replaces max_steps)")
    elif config.max_tokens > 0:
        log(f"max_tokens {config.max_tokens:,}: {config.max_steps:,} steps of {run.tokens_per_step:,} tokens (this "
            f"replaces max_steps)")
    if config.fsdp and ranks.world_size == 1:
        log("--fsdp: one process has nothing to shard with; training unsharded")


def progress_bar(run: Run) -> tqdm:
    """Steps of max_steps; for a time-limited run seconds, since that, not max_steps, is what will end it."""
    timed = bool(run.max_seconds)
    return tqdm(total=round(run.max_seconds) if timed else run.config.max_steps,
                initial=round(run.state.elapsed) if timed else run.state.step, unit="s" if timed else "step",
                disable=not (run.config.progress and run.ranks.is_main), dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]")


def train_step(forward, model, optimizers, scaler, autocast, config: TrainConfig, next_batch,
               average=lambda loss: loss, objective=next_token_loss) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches; the mean loss (`average`d over processes) as a tensor on
    the device. Reading it waits for the device to finish the step, so the loop reads it only when it logs; a
    non-finite loss then stops training, and no checkpoint is written from non-finite weights."""
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        batch = next_batch()
        with gradient_sync(forward, model, enabled=micro == config.grad_accum - 1):
            with autocast:
                loss = objective(forward, batch)
            scaler.scale(loss / config.grad_accum).backward()
        loss_sum = loss_sum + loss.detach()
    if config.grad_clip:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return average(loss_sum) / config.grad_accum


def run_steps(run: Run, metrics: Metrics) -> Path | None:
    """Train until max_steps or the time budget, logging, evaluating and saving on their intervals; the last
    checkpoint saved."""
    config, ranks, state, bar, max_seconds = run.config, run.ranks, run.state, metrics.bar, run.max_seconds
    T = run.model_config.context_length
    objective, next_batch = batch_source(config, run.train_shard, run.tokenizer, T, state.data_rng, ranks)
    val_windows = fixed_windows(run.val_shard, config.eval_batches * config.batch_size, T) if run.val_shard else None
    extra = {"train": dataclasses.asdict(config), "parameters": run.parameters}
    schedule_steps = config.schedule_steps or config.max_steps
    last_saved, window_start, window_tokens = None, time.perf_counter(), 0
    state.model.train()
    while state.step < config.max_steps and not (max_seconds and state.elapsed >= max_seconds):
        started = time.perf_counter()
        progress = max(state.step / schedule_steps, state.elapsed / max_seconds if max_seconds else 0.0)
        lr = set_learning_rates(state.optimizers, lr_multiplier(state.step, progress, config), config)
        loss = train_step(run.forward, state.model, state.optimizers, state.scaler, run.autocast, config, next_batch,
                          ranks.mean, objective)
        state.step += 1
        # the budget and the schedule run on one clock for all ranks: on its own clock each rank would stop at a
        # different step and leave the other waiting in a collective for ever
        step_seconds = ranks.slowest(time.perf_counter() - started)
        state.elapsed += step_seconds
        window_tokens += run.tokens_per_step
        bar.update(min(step_seconds, bar.total - bar.n) if max_seconds else 1)
        finished = state.step >= config.max_steps or (max_seconds and state.elapsed >= max_seconds)
        if state.step % config.log_interval == 0 or finished:
            loss_value = float(loss)  # waits for the device: once per log line, not once per step
            if not math.isfinite(loss_value):
                raise diverged(run.run_dir, f"loss stopped being finite by step {state.step}")
            tokens_per_s = window_tokens / (time.perf_counter() - window_start)
            window_start, window_tokens = time.perf_counter(), 0
            metrics.log_loss(state.step, loss_value, lr, tokens_per_s, state.elapsed)
        if val_windows is not None and (state.step % config.eval_interval == 0 or finished):
            val_loss = windowed_loss(state.model, val_windows, config.batch_size, ranks.device, run.autocast)
            metrics.log_validation(state.step, val_loss, run.val_shard.bytes_per_token, state.elapsed)
        if state.step % config.checkpoint_interval == 0 or finished:
            last_saved = save_resumable(state, run.run_dir, ranks, run.tokenizer, extra, config.keep_checkpoints)
    return last_saved


def train(model_config: ModelConfig, config: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train a transformer as configured; returns a summary (steps, losses, tokens/s, checkpoint path)."""
    run = set_up(model_config, config, resume, log)
    if not run.ranks.is_main:
        log = lambda *_: None  # noqa: E731  (one voice: rank 0 prints, records and saves)
    describe(run, log)
    metrics = Metrics(run.run_dir, progress_bar(run), run.ranks.is_main, run.state.step if resume else None,
                      run.config.report_to, {"model": dataclasses.asdict(run.model_config),
                                             "train": dataclasses.asdict(run.config)})
    try:
        last_saved = run_steps(run, metrics)
    finally:  # an exception (divergence, Ctrl-C) still leaves complete metric lines and a clean terminal
        metrics.close()
    metrics.write_tables()
    leave(run.ranks)
    return {"parameters": run.parameters, "run_dir": str(run.run_dir), **metrics.latest, "step": run.state.step,
            "elapsed_s": run.state.elapsed, "checkpoint": str(last_saved or latest_checkpoint(run.run_dir))}

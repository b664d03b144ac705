"""The training loop: random windows of the token stream, AdamW, schedules, evaluation, exact resume.

Everything that decides what happens next (weights, optimizer moments, RNG streams, step, elapsed time) is in a
checkpoint, so `resume=True` continues bit for bit where the run stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from talelab.config import ModelConfig, TrainConfig
from talelab.data.shards import Shard, load_shard, pretokenize
from talelab.devices import autocast_context, pick_device, training_dtype
from talelab.errors import ConfigError, InputError, MismatchError, TrainingDiverged
from talelab.models.storage import check_vocabulary, load_weights, read_config
from talelab.models import build_model
from talelab.plots import loss_chart
from talelab.tokenizer import load_tokenizer
from talelab.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, unsharded_copy
from talelab.train.distributed import (Ranks, all_finite, gathered_state, gradient_sync, held_parameters, is_sharded,
                                      join, leave, load_optimizer_state, rank_rng_states, seed_rank, wrap)
from talelab.train.objectives import contrastive_loss, next_token_loss, shuffled_stories
from talelab.train.optim import lr_multiplier, make_optimizer


def random_windows(shard: Shard, batch_size: int, length: int, generator: torch.Generator, device,
                   rows: slice = slice(None)) -> tuple:
    """`rows` of `batch_size` windows of `length` + 1 tokens at random offsets: inputs and next-token targets."""
    starts = torch.randint(0, len(shard.tokens) - length - 1, (batch_size,), generator=generator).tolist()[rows]
    batch = torch.from_numpy(np.stack([shard.tokens[s:s + length + 1] for s in starts]).astype(np.int64))
    if torch.device(device).type == "cuda":  # a copy overlaps the device's work only from page-locked memory
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    return batch[:, :-1], batch[:, 1:]


def epoch_steps(epochs: float, num_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps that draw `epochs` times the split's `num_tokens` (at least one step)."""
    wanted = round(epochs * num_tokens)  # rounded first: 0.7 * 1000 is 700.0000000000001, which is not 8 steps of 100
    return max(1, -(-wanted // tokens_per_step))


def fixed_windows(shard: Shard, count: int, length: int) -> np.ndarray:
    """Evenly spaced windows over a split, the same at every evaluation so losses are comparable."""
    span = len(shard.tokens) - length - 1
    count = max(1, min(count, span // length + 1))
    starts = np.linspace(0, span, count).astype(np.int64)
    return np.stack([shard.tokens[s:s + length + 1] for s in starts]).astype(np.int64)


@torch.no_grad()
def windowed_loss(model, windows: np.ndarray, batch_size: int, device, autocast) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[i:i + batch_size]).to(device)
        with autocast:
            _, loss = model(batch[:, :-1], batch[:, 1:])
        total += loss.item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def write_metrics_csv(records: list[dict], path: Path) -> None:
    columns = sorted({key for r in records for key in r}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


def read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """Metrics of an earlier session, dropping lines past the checkpoint we resume from."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r["step"] <= up_to_step]


def train_step(forward, model, optimizer, scaler, autocast, config: TrainConfig, next_batch,
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
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return average(loss_sum) / config.grad_accum


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


def train(model_config: ModelConfig, config: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train a transformer as configured; returns a summary (steps, losses, tokens/s, checkpoint path)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ranks = join(pick_device(config.device))
    device, rows = ranks.device, ranks.rows(config.batch_size)
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
    if config.epochs > 0:  # the steps are fixed here, so a resumed run, reading the same split, stops where planned
        config = dataclasses.replace(config, max_steps=epoch_steps(config.epochs, len(train_shard.tokens),
                                                                   tokens_per_step))

    run_dir = Path(config.out)
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        raise InputError(f"{run_dir}: nothing to resume (no 'latest' checkpoint pointer)")
    if not resume and checkpoint is not None:
        raise ConfigError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    ranks.barrier()  # every rank has checked before rank 0 writes anything
    run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    # to be sharded, the whole model waits in CPU memory: fully_shard moves each rank's slices to the device
    model = build_model(model_config).to("cpu" if config.fsdp and ranks.world_size > 1 else device)
    n_params = model.num_parameters()
    if resume:
        saved = read_config(checkpoint)
        if saved["model"] != dataclasses.asdict(model_config):
            changed = [k for k, v in dataclasses.asdict(model_config).items() if saved["model"].get(k) != v]
            raise MismatchError(f"{checkpoint}: checkpoint has another model shape ({', '.join(changed)} differ)")
        load_weights(model, checkpoint / "model.safetensors")  # whole weights on every rank; FSDP then slices them
    # under FSDP `model` itself is sharded here, so the optimizer is made afterwards, over this rank's slices
    forward = wrap(model, ranks, fsdp=config.fsdp, compile=config.compile, dtype=config.dtype)
    optimizer = make_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "float16")
    data_rng = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0
    if resume:
        state = load_trainer_state(checkpoint)
        load_optimizer_state(model, optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        data_rng.set_state(state["data_rng"])
        step, elapsed = state["step"], state["elapsed"]
        seed_rank(config.seed, ranks, state.get("rank_rngs") or [(state["torch_rng"], state.get("cuda_rng"))], step)
        log(f"resuming {run_dir} from step {step}")
    else:
        seed_rank(config.seed, ranks)
    if not ranks.is_main:
        log = lambda *_: None  # noqa: E731  (one voice: rank 0 prints, records and saves)

    metrics_path = run_dir / "metrics.jsonl"
    records = read_metrics(metrics_path, step) if resume else []
    if ranks.is_main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    metrics = open(metrics_path if ranks.is_main else os.devnull, "a", encoding="utf-8")
    val_windows = fixed_windows(val_shard, config.eval_batches * config.batch_size, T) if val_shard else None
    extra = {"train": dataclasses.asdict(config), "parameters": n_params}
    log(f"model: {n_params:,} parameters ({n_params / 1e6:.2f}M), vocab {model_config.vocab_size}, context {T}; "
        f"train {len(train_shard.tokens):,} tokens; device {device}, {config.dtype}"
        + (f"; {ranks.world_size} processes" if ranks.world_size > 1 else "")
        + (f" (FSDP: {held_parameters(model):,} parameters held by each)" if is_sharded(model) else ""))
    if config.epochs > 0:
        log(f"epochs {config.epochs:g}: {config.max_steps:,} steps of {tokens_per_step:,} tokens over "
            f"{len(train_shard.tokens):,} training tokens (this replaces max_steps)")
    if config.fsdp and ranks.world_size == 1:
        log("--fsdp: one process has nothing to shard with; training unsharded")

    def diverged(what: str):
        good = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{run_dir}: {what}; training stopped, {kept} (try a lower --lr or --grad-clip)")

    def save(step: int) -> Path | None:
        """Every rank takes part (gathering FSDP shards is collective); rank 0 writes."""
        if not all_finite(model, ranks):  # never publish a broken checkpoint
            diverged(f"weights stopped being finite by step {step}")
        weights, optimizer_state = gathered_state(model, optimizer)
        rngs = rank_rng_states(ranks)
        if not ranks.is_main:
            return None
        state = {"optimizer": optimizer_state, "scaler": scaler.state_dict(), "data_rng": data_rng.get_state(),
                 "torch_rng": rngs[0][0], "cuda_rng": rngs[0][1], "rank_rngs": rngs, "step": step,
                 "elapsed": elapsed}
        plain = unsharded_copy(model, weights) if weights is not None else model
        return save_checkpoint(run_dir, step, plain, tokenizer, state, extra, config.keep_checkpoints)

    def record(entry: dict) -> None:
        records.append(entry)
        metrics.write(json.dumps(entry) + "\n")
        metrics.flush()

    schedule_steps = config.schedule_steps or config.max_steps
    max_seconds = config.max_minutes * 60
    from tqdm import tqdm

    # a time-limited run shows seconds, since that, not max_steps, is what will end it
    bar = tqdm(total=round(max_seconds) if max_seconds else config.max_steps, initial=round(elapsed) if max_seconds
               else step, unit="s" if max_seconds else "step", disable=not (config.progress and ranks.is_main),
               dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]")
    summary = {"parameters": n_params, "run_dir": str(run_dir)}
    last_saved, window_start, window_tokens = None, time.perf_counter(), 0
    if config.objective == "contrastive":  # a share of every batch becomes sentence-shuffled stories
        shuffled = round(config.contrastive_fraction * config.batch_size)
        objective = contrastive_loss(config.contrastive_alpha)
        normal_rows = ranks.rows(config.batch_size - shuffled) if shuffled < config.batch_size else slice(0)
        shuffled_rows = ranks.rows(shuffled)

        def next_batch():
            return (*random_windows(train_shard, config.batch_size - shuffled, T, data_rng, device, normal_rows),
                    *shuffled_stories(train_shard, tokenizer, shuffled, T, data_rng, device, shuffled_rows))
    else:
        objective = next_token_loss

        def next_batch():
            return random_windows(train_shard, config.batch_size, T, data_rng, device, rows)

    model.train()
    try:
        while step < config.max_steps and not (max_seconds and elapsed >= max_seconds):
            started = time.perf_counter()
            progress = max(step / schedule_steps, elapsed / max_seconds if max_seconds else 0.0)
            lr = config.lr * lr_multiplier(step, progress, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(forward, model, optimizer, scaler, autocast, config, next_batch, ranks.mean, objective)
            step += 1
            # the budget and the schedule run on one clock for all ranks: on its own clock each rank would stop at a
            # different step and leave the other waiting in a collective for ever
            step_seconds = ranks.slowest(time.perf_counter() - started)
            elapsed += step_seconds
            window_tokens += tokens_per_step
            bar.update(min(step_seconds, bar.total - bar.n) if max_seconds else 1)
            finished = step >= config.max_steps or (max_seconds and elapsed >= max_seconds)
            if step % config.log_interval == 0 or finished:
                loss_value = float(loss)  # waits for the device: once per log line, not once per step
                if not math.isfinite(loss_value):
                    diverged(f"loss stopped being finite by step {step}")
                tokens_per_s = window_tokens / (time.perf_counter() - window_start)
                window_start, window_tokens = time.perf_counter(), 0
                record({"step": step, "loss": round(loss_value, 5), "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                        "elapsed_s": round(elapsed, 2)})
                bar.set_postfix(step=step, loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
                summary.update(loss=loss_value, tokens_per_s=tokens_per_s)
            if val_windows is not None and (step % config.eval_interval == 0 or finished):
                val_loss = windowed_loss(model, val_windows, config.batch_size, device, autocast)
                bpb = val_loss / math.log(2) / val_shard.bytes_per_token
                record({"step": step, "val_loss": round(val_loss, 5), "val_bpb": round(bpb, 5),
                        "elapsed_s": round(elapsed, 2)})
                if ranks.is_main:
                    bar.write(f"step {step}: val loss {val_loss:.4f}, {bpb:.4f} bits per byte (val split windows)")
                summary.update(val_loss=val_loss, val_bpb=bpb)
            if step % config.checkpoint_interval == 0 or finished:
                last_saved = save(step)
    finally:  # an exception (divergence, Ctrl-C) still leaves complete metric lines and a clean terminal
        bar.close()
        metrics.close()
    if ranks.is_main:
        write_metrics_csv(records, run_dir / "metrics.csv")
        loss_chart(records, run_dir / "loss.png", "val_loss", "validation loss", bits_per_byte=True)
    leave(ranks)
    summary.update(step=step, elapsed_s=elapsed, checkpoint=str(last_saved or latest_checkpoint(run_dir)))
    return summary

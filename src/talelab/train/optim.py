"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from talelab.config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, while norms, biases and embeddings (whose rows see few updates) do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied lm_head appears once, as embed.weight
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel exists for CPU and CUDA and does the whole update in one pass over memory
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused)


def lr_multiplier(step: int, progress: float, config: TrainConfig) -> float:
    """Share of the peak rate at optimizer step `step` (0-based) when `progress` in [0, 1] of training is done."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "wsd":  # warmup-stable-decay: hold the peak, then fall linearly in the last stretch
        decay_start = 1 - config.decay_fraction
        if progress <= decay_start:
            return 1.0
        return 1 - (1 - floor) * min(1.0, (progress - decay_start) / max(config.decay_fraction, 1e-9))
    if config.schedule == "step":  # StepLR, as seed 002 used
        return config.gamma ** ((step - config.warmup_steps) // config.step_size)
    return 1.0

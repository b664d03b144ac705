"""The optimizers (AdamW, or Muon for the hidden matrices beside AdamW for the rest) and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from talelab.config import TrainConfig


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A weight matrix inside the network: not an embedding or the output layer (which look up or score tokens one
    row at a time, so an orthogonalised update treats them wrongly), not a norm or bias."""
    return p.dim() == 2 and "embed" not in name and "lm_head" not in name


def make_optimizers(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW over every weight, where matrices decay and norms, biases and embeddings (whose rows see few updates)
    do not; or, with `optimizer: muon`, torch's Muon over the hidden matrices and that AdamW over the rest. One
    step steps them all; checkpoints hold them all."""
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():  # a tied lm_head appears once, as embed.weight
        if not p.requires_grad:
            continue
        if config.optimizer == "muon" and is_hidden_matrix(name, p):
            muon.append(p)
        else:
            (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel exists for CPU and CUDA and does the whole update in one pass over memory
    fused = device.type in ("cpu", "cuda")
    optimizers = [torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                    betas=(config.beta1, config.beta2), fused=fused)]
    if muon:
        optimizers.append(torch.optim.Muon(muon, lr=config.muon_lr, momentum=config.muon_momentum,
                                           weight_decay=config.muon_weight_decay))
    return optimizers


def set_learning_rates(optimizers: list[torch.optim.Optimizer], multiplier: float, config: TrainConfig) -> float:
    """Every group at `multiplier` times its optimizer's peak rate; returns AdamW's rate (the one logged)."""
    for optimizer in optimizers:
        peak = config.muon_lr if isinstance(optimizer, torch.optim.Muon) else config.lr
        for group in optimizer.param_groups:
            group["lr"] = peak * multiplier
    return config.lr * multiplier


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

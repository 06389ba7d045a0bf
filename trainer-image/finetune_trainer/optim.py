"""AdamW and the learning-rate schedule: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math

import torch
from finetune_core.api import Training


def build_optimizer(model: torch.nn.Module, training: Training) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": training.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    on_gpu = bool(decay) and decay[0].is_cuda
    return torch.optim.AdamW(
        groups, lr=training.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True if on_gpu else None
    )


def warmup_steps(training: Training, total_steps: int) -> int:
    return math.ceil(training.warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, training: Training, total_steps: int):
    warmup = warmup_steps(training, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, training.scheduler)
    )

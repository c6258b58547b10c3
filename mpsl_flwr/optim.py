"""Optimiser and learning-rate schedule shared by every strategy and both sides of MPSL.

AdamW is per-parameter, so one optimiser over the whole model (centralized) and two
over its halves (MPSL server and client) take identical steps. The schedule lives on
the server, which sends each step's learning rate to the clients. Builders take the
optimisation part of the run config (``RunConfig.optim``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn

from mpsl_flwr.config import ConfigError, OptimConfig


def make_optimizer(params: Iterable[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable ``params`` (``learning-rate``, ``weight-decay``)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        # An empty optimiser is legal for a fully frozen part; AdamW refuses [].
        trainable = [nn.Parameter(torch.zeros(0), requires_grad=True)]
    return torch.optim.AdamW(trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then cosine)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(optim: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of ``total_steps`` (what the scheduler would give)."""
    warmup = int(optim.warmup_ratio * total_steps)
    return optim.learning_rate * lr_factor(step, total_steps, warmup, optim.lr_schedule)


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up plus cosine decay over ``total_steps`` (``lr-schedule``, ``warmup-ratio``)."""
    warmup = int(optim.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            lr_factor, total_steps=total_steps, warmup_steps=warmup, schedule=optim.lr_schedule
        ),
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` for the next step (clients follow the server's schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def resolve_device(choice: str, key: str) -> torch.device:
    """``auto`` picks CUDA when this process sees a GPU, else the CPU; ``cuda`` without
    one is a :class:`ConfigError` naming run-config ``key``."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Run-config key '{key}' is 'cuda', but this machine has no usable CUDA device "
            f'(torch.cuda.is_available() is False). Fix: {key}="auto" or "cpu".'
        )
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)

"""One optimisation step of the whole model (head + server), for non-split training.

Centralized training and every FedAvg-family client use this, so they differ from MPSL
only in *where* the step runs, not in what it computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mpsl_flwr.data.base import MultimodalDataset
from mpsl_flwr.data.partition import batch_indices
from mpsl_flwr.models.split_model import SplitModel
from mpsl_flwr.optim import set_lr
from mpsl_flwr.progress import progress
from mpsl_flwr.records import EpochStats
from mpsl_flwr.tasks import Task


def train_step(
    model: SplitModel,
    batch: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    task: Task,
) -> tuple[float, int, int]:
    """Forward, loss, backward and one optimiser step; returns (loss, correct, samples)."""
    model.train()
    out = model(batch)
    loss = task.loss(out, labels=batch["label"], tail=model.server.tail)
    correct = task.correct(out.detach(), batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), correct, len(batch["label"])


def train_epoch(
    model: SplitModel,
    optimizer: torch.optim.Optimizer,
    dataset: MultimodalDataset,
    rows: np.ndarray,
    batch_size: int,
    epoch: int,
    shuffle_seed: int,
    lr_at: Callable[[int], float],
    task: Task,
    device: torch.device,
    desc: str | None = None,
    show_progress: bool = False,
) -> EpochStats:
    """One pass over ``rows`` of ``dataset`` in the seeded order of ``epoch``.

    ``lr_at(step)`` gives the learning rate of each local step (the shared schedule).
    """
    result = EpochStats()
    steps = math.ceil(len(rows) / batch_size) if len(rows) else 0
    for step in progress(range(steps), desc or f"epoch {epoch + 1}", enabled=show_progress):
        positions = batch_indices(len(rows), epoch, shuffle_seed, step * batch_size, batch_size)
        batch = {k: v.to(device) for k, v in dataset.batch(rows[positions]).items()}
        set_lr(optimizer, lr_at(step))
        loss, correct, n = train_step(model, batch, optimizer, task)
        result.loss_sum += loss * n
        result.correct += correct
        result.samples += n
        result.steps += 1
    return result

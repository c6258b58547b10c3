"""One optimisation step of the whole model (head + server), for non-split training.

Centralized training and every FedAvg-family client use this, so they differ from MPSL
only in *where* the step runs, not in what it computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mpsl_flwr import tasks
from mpsl_flwr.data.base import MultimodalDataset
from mpsl_flwr.data.partition import batch_indices
from mpsl_flwr.models.split_model import SplitModel
from mpsl_flwr.optim import set_lr
from mpsl_flwr.progress import progress


def train_step(
    model: SplitModel,
    batch: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    kind: str,
) -> tuple[float, int, int]:
    """Forward, loss, backward and one optimiser step; returns (loss, correct, samples)."""
    model.train()
    out = model(batch)
    if kind == "retrieval":
        loss = tasks.contrastive_loss(out, model.server.tail.logit_scale)
        correct = 0
    else:
        loss = tasks.classification_loss(out, batch["label"])
        correct = tasks.accuracy_counts(out.detach(), batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), correct, len(batch["label"])


@dataclass
class EpochResult:
    """Sums over one local pass."""

    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    steps: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.samples)


def train_epoch(
    model: SplitModel,
    optimizer: torch.optim.Optimizer,
    dataset: MultimodalDataset,
    rows: np.ndarray,
    batch_size: int,
    epoch: int,
    shuffle_seed: int,
    lr_at: Callable[[int], float],
    kind: str,
    device: torch.device,
    desc: str | None = None,
    show_progress: bool = False,
) -> EpochResult:
    """One pass over ``rows`` of ``dataset`` in the seeded order of ``epoch``.

    ``lr_at(step)`` gives the learning rate of each local step (the shared schedule).
    """
    result = EpochResult()
    steps = math.ceil(len(rows) / batch_size) if len(rows) else 0
    for step in progress(range(steps), desc or f"epoch {epoch + 1}", enabled=show_progress):
        positions = batch_indices(len(rows), epoch, shuffle_seed, step * batch_size, batch_size)
        batch = {k: v.to(device) for k, v in dataset.batch(rows[positions]).items()}
        set_lr(optimizer, lr_at(step))
        loss, correct, n = train_step(model, batch, optimizer, kind)
        result.loss_sum += loss * n
        result.correct += correct
        result.samples += n
        result.steps += 1
    return result

"""One optimisation step of the whole model (head + server), for non-split training.

Centralized training and every FedAvg-family client use this, so they differ from MPSL
only in *where* the step runs, not in what it computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mpsl_flwr import tasks
from mpsl_flwr.models.split_model import SplitModel


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

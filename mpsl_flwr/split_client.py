"""Client half of an MPSL step for one logical client: head, optimiser and its data.

Pure PyTorch, no Flower: ``clients/mpsl.py`` restores it from ``context.state`` for each
message and saves it afterwards. Nothing of the autograd graph survives between
messages, so the backward leg recomputes the (cheap) head forward on the same batch,
which the deterministic batch order makes possible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mpsl_flwr.data.base import MultimodalDataset
from mpsl_flwr.data.partition import batch_indices
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.optim import set_lr
from mpsl_flwr.protocol import BatchPlan
from mpsl_flwr.tasks import Task


class SplitClient:
    """One logical client: its partition of the training set, its head and the task whose
    loss it computes on its own labels."""

    def __init__(
        self,
        head: ClientHead,
        optimizer: torch.optim.Optimizer,
        dataset: MultimodalDataset,
        partition: np.ndarray,
        shuffle_seed: int,
        device: torch.device,
        task: Task,
    ) -> None:
        self.head = head.to(device)
        self.optimizer = optimizer
        self.dataset = dataset
        self.partition = partition
        self.shuffle_seed = shuffle_seed
        self.device = device
        self.task = task

    def batch(self, plan: BatchPlan) -> dict[str, Tensor]:
        """The samples of ``plan``: a slice of this epoch's seeded permutation."""
        positions = batch_indices(
            len(self.partition), plan.epoch, self.shuffle_seed, plan.offset, plan.size
        )
        rows = self.partition[positions]
        return {k: v.to(self.device) for k, v in self.dataset.batch(rows).items()}

    def activations(self, plan: BatchPlan) -> dict[str, Tensor]:
        """Cut-layer activations of the planned batch (no graph kept)."""
        self.head.train()
        with torch.no_grad():
            return self.head(self.batch(plan))

    def loss_grad(self, plan: BatchPlan, output: Tensor) -> tuple[Tensor, float, int, int]:
        """``dL_n/dz_n`` of the task's mean loss on this client's own labels.

        Returns the gradient, the loss, the number of correct predictions and ``b_n``.
        """
        labels = self.batch(plan)["label"]
        if output.shape[0] != labels.shape[0]:
            raise ValueError(
                f"server sent {output.shape[0]} outputs for a batch of {labels.shape[0]}."
            )
        z = output.to(self.device, torch.float32).requires_grad_(True)
        loss = self.task.loss(z, labels=labels)
        loss.backward()
        assert z.grad is not None  # z is a leaf the loss depends on
        return (
            z.grad.detach().cpu(),
            loss.item(),
            self.task.correct(z.detach(), labels),
            len(labels),
        )

    def apply_cut_grad(self, plan: BatchPlan, cut_grads: dict[str, Tensor], lr: float) -> None:
        """Recompute the head on the same batch, backpropagate the server's gradient, step."""
        self.head.train()
        acts = self.head(self.batch(plan))
        if set(acts) != set(cut_grads):
            raise KeyError(f"cut-layer gradient for {sorted(cut_grads)}; head has {sorted(acts)}.")
        tensors, grads = [], []
        for stream, a in acts.items():
            g = cut_grads[stream].to(self.device, a.dtype)
            if g.shape != a.shape:
                raise ValueError(
                    f"cut-layer gradient '{stream}' has shape {list(g.shape)}; "
                    f"activations have {list(a.shape)}."
                )
            tensors.append(a)
            grads.append(g)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(tensors, grads)
        self.optimizer.step()

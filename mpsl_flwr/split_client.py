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
        training_labels: np.ndarray | None = None,
    ) -> None:
        self.head = head.to(device)
        self.optimizer = optimizer
        self.dataset = dataset
        self.partition = partition
        self.shuffle_seed = shuffle_seed
        self.device = device
        self.task = task
        # label-dp: the labels this client trains on, one per partition position (None:
        # the dataset's own).
        self.training_labels = training_labels

    def positions(self, plan: BatchPlan) -> np.ndarray:
        """Positions in the partition of ``plan``'s samples: a slice of this epoch's
        seeded permutation."""
        return batch_indices(
            len(self.partition), plan.epoch, self.shuffle_seed, plan.offset, plan.size
        )

    def batch(self, plan: BatchPlan) -> dict[str, Tensor]:
        """The samples of ``plan``."""
        rows = self.partition[self.positions(plan)]
        return {k: v.to(self.device) for k, v in self.dataset.batch(rows).items()}

    def labels(self, plan: BatchPlan) -> Tensor:
        """The labels this client trains ``plan`` on: its randomized-response labels under
        label-dp, the true ones otherwise."""
        if self.training_labels is None:
            return self.batch(plan)["label"]
        return torch.from_numpy(self.training_labels[self.positions(plan)]).to(self.device)

    def activations(self, plan: BatchPlan) -> dict[str, Tensor]:
        """Cut-layer activations of the planned batch (no graph kept)."""
        self.head.train()
        with torch.no_grad():
            return self.head(self.batch(plan))

    def loss_grad(
        self, plan: BatchPlan, output: Tensor, lr: float | None = None
    ) -> tuple[Tensor, float, int, int]:
        """``dL_n/dz_n`` of the task's mean loss on this client's own labels.

        ``z`` is what the server sent: logits, or (client tail) pooled embeddings, which
        the head's classifier turns into logits here; that classifier then takes its
        step, at the server's learning rate ``lr``. The loss and the correct count are
        measured on the labels trained on (under label-dp the noisy ones: anything
        computed from the true labels would leak them).

        Returns the gradient, the loss, the number of correct predictions and ``b_n``.
        """
        labels = self.labels(plan)
        if output.shape[0] != labels.shape[0]:
            raise ValueError(
                f"server sent {output.shape[0]} outputs for a batch of {labels.shape[0]}."
            )
        tail = self.head.classifier
        if tail is not None:
            if lr is None:
                raise ValueError("the server sent no learning rate for the client tail.")
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
        z = output.to(self.device, torch.float32).requires_grad_(True)
        logits = self.head.classify(z)
        loss = self.task.loss(logits, labels=labels)
        loss.backward()
        if tail is not None:
            self.optimizer.step()  # only the classifier has gradients
        assert z.grad is not None  # z is a leaf the loss depends on
        return (
            z.grad.detach().cpu(),
            loss.item(),
            self.task.correct(logits.detach(), labels),
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

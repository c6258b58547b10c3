"""Server half of an MPSL step: one forward and one backward over the global batch.

Pure PyTorch, no Flower: :class:`strategies.mpsl.MPSL` feeds it what the clients sent.
The aggregated loss is ``L_S = sum_n (|B_n| / |B|) L_n`` over the clients present at
the loss leg, so one backward pass gives exactly the gradient of the mean loss over the
concatenated batch, and a client that drops out leaves the aggregate. With ``precision``
(:mod:`mpsl_flwr.precision`) the forward pass and the loss run under bf16 autocast; the
weights, their optimizer and everything sent to the clients stay fp32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.precision import autocast
from mpsl_flwr.tasks import Task


class SplitServer:
    """Holds the server model and its optimiser; runs the two halves of a step.

    ``task`` says which backward applies: with labels on the client
    (``task.labels_on_client``) the clients' output gradients; otherwise the task's loss
    over the whole global batch, computed here.
    """

    def __init__(
        self,
        model: ServerModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        task: Task,
        device: torch.device,
        precision: torch.dtype | None = None,
    ) -> None:
        self.model = model.to(device)
        self.precision = precision
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.task = task
        self.device = device
        self._inputs: dict[str, Tensor] = {}
        self._output: Tensor | None = None
        self._slices: dict[int, slice] = {}

    @property
    def lr(self) -> float:
        """Learning rate of the step about to be taken."""
        return float(self.optimizer.param_groups[0]["lr"])

    def forward(self, activations: Mapping[int, Mapping[str, Tensor]]) -> dict[int, Tensor]:
        """Concatenate the clients' activations, run body and tail once, slice the output."""
        order = sorted(activations)
        if not order:
            raise ValueError("forward() needs activations from at least one client.")
        self._slices, start = {}, 0
        for cid in order:
            n = len(next(iter(activations[cid].values())))
            self._slices[cid] = slice(start, start + n)
            start += n
        self.model.train()
        self._inputs = {
            s: torch.cat([activations[c][s] for c in order])
            .to(self.device, torch.float32)
            .requires_grad_(True)
            for s in self.model.streams
        }
        with autocast(self.device, self.precision):
            # fp32 for the clients and the backward's seed (a no-op without autocast).
            self._output = self.model(self._inputs).float()
        return {cid: self._output[sl].detach().cpu() for cid, sl in self._slices.items()}

    def backward_from_client_grads(
        self, output_grads: Mapping[int, Tensor]
    ) -> tuple[dict[int, dict[str, Tensor]], int]:
        """Labels on the clients: combine ``dL_n/dz_n`` into ``dL_S/dz``; one backward; one step.

        Returns the cut-layer gradient of every client present in ``output_grads`` and
        ``|B|``, the number of samples that entered the update.
        """
        present = sorted(output_grads)
        total = sum(self._slices[c].stop - self._slices[c].start for c in present)
        if total == 0:
            return {}, 0
        output = self._forwarded()
        grad = torch.zeros_like(output)
        for cid in present:
            sl = self._slices[cid]
            weight = (sl.stop - sl.start) / total
            grad[sl] = output_grads[cid].to(self.device, grad.dtype) * weight
        output.backward(grad)
        return self._step(present), total

    def backward_from_server_loss(self) -> tuple[dict[int, dict[str, Tensor]], float, int]:
        """No labels needed (retrieval): the task's loss over the whole global batch, here."""
        with autocast(self.device, self.precision):
            loss = self.task.loss(self._forwarded(), tail=self.model.tail)
        loss.backward()
        present = sorted(self._slices)
        total = self._slices[present[-1]].stop
        return self._step(present), loss.item(), total

    def _forwarded(self) -> Tensor:
        """The output of the last :meth:`forward`, whose backward is due."""
        assert self._output is not None, "a backward needs a forward() first"
        return self._output

    def _step(self, present: list[int]) -> dict[int, dict[str, Tensor]]:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        cut = {
            cid: {s: _grad(x)[self._slices[cid]].detach().cpu() for s, x in self._inputs.items()}
            for cid in present
        }
        self._inputs, self._output = {}, None
        return cut


def _grad(x: Tensor) -> Tensor:
    """The gradient of an input the forward pass used (set by the backward)."""
    assert x.grad is not None
    return x.grad

"""Measured compute of each strategy, split by where it runs (client or server).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real modules
running a real step (attention included), never by hand arithmetic. What runs where:

* **MPSL** client: the head forward for the activations, then the head forward again
  (recompute) and its backward; server: body and tail, forward and backward.
* **FedAvg / FedCLIP** client: a whole local training step (for FedCLIP the frozen
  encoder still runs forward, and backward as far as a trainable parameter needs it);
  server: only aggregation (no FLOPs counted).
* **Centralized**: everything on the server.

All figures are per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mpsl_flwr import tasks
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel, count_trainable


@dataclass(frozen=True)
class CostReport:
    """Per-sample compute and trainable parameters on each side of a strategy."""

    strategy: str
    client_params: int
    server_params: int
    client_gflops_fwd: float
    client_gflops_fwd_bwd: float
    server_gflops_fwd: float
    server_gflops_fwd_bwd: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _loss(exp: Experiment, model: SplitModel, out: torch.Tensor, batch) -> torch.Tensor:
    if exp.spec.kind == "retrieval":
        return tasks.contrastive_loss(out, model.server.tail.logit_scale)
    return tasks.classification_loss(out, batch["label"])


def measure(exp: Experiment, batch_size: int = 4) -> CostReport:
    """Trainable parameters and GFLOPs per sample of ``exp.cfg.strategy``."""
    head, server = exp.initial_model()
    model = SplitModel(head, server)
    batch = exp.test_set().batch(np.arange(batch_size))
    strategy = exp.cfg.strategy

    def head_fwd() -> None:
        with torch.no_grad():
            head(batch)

    def head_fwd_bwd() -> None:
        acts = head(batch)
        torch.autograd.backward(
            [a for a in acts.values() if a.requires_grad],
            [torch.ones_like(a) for a in acts.values() if a.requires_grad],
        )

    acts = {k: v.detach() for k, v in head(batch).items()}

    def server_fwd() -> None:
        with torch.no_grad():
            server(acts)

    def server_fwd_bwd() -> None:
        inputs = {k: v.clone().requires_grad_(True) for k, v in acts.items()}
        _loss(exp, model, server(inputs), batch).backward()

    def model_fwd() -> None:
        with torch.no_grad():
            model(batch)

    def model_fwd_bwd() -> None:
        loss = _loss(exp, model, model(batch), batch)
        if loss.requires_grad:
            loss.backward()

    g = 1e9 * batch_size
    if strategy == "mpsl":
        fwd = count_flops(head_fwd)
        return CostReport(
            strategy,
            count_trainable(head),
            count_trainable(server),
            fwd / g,
            (fwd + count_flops(head_fwd_bwd)) / g,
            count_flops(server_fwd) / g,
            count_flops(server_fwd_bwd) / g,
        )
    whole_fwd, whole = count_flops(model_fwd) / g, count_flops(model_fwd_bwd) / g
    if strategy == "centralized":
        return CostReport(strategy, 0, count_trainable(model), 0.0, 0.0, whole_fwd, whole)
    return CostReport(strategy, count_trainable(model), 0, whole_fwd, whole, 0.0, 0.0)

"""Measured compute of each strategy, split by where it runs (client or server).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real modules
running a real step (attention included), never by hand arithmetic. What runs where:

* **MPSL** client: the head forward for the activations, then the head forward again
  (recompute) and its backward; server: body and tail, forward and backward. With
  ``label-privacy=client-tail`` the classifier's forward and backward (the loss leg) count
  on the client, and the server's backward starts from the gradient at the pooled
  embedding.
* **FedAvg / FedCLIP** client: a whole local training step (for FedCLIP the frozen
  encoder still runs forward, and backward as far as a trainable parameter needs it);
  server: only aggregation (no FLOPs counted).
* **Centralized**: everything on the server.

FLOPs are per sample. Training memory is per step at the measured batch: weights,
gradients and AdamW state of what trains, plus every tensor autograd saves for the
backward pass (caught with ``torch.autograd.graph.saved_tensors_hooks``), so it also
counts on the ``meta`` device, where ViT-H at 224x224 costs no real memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel, build_head, build_server, count_trainable
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.staging import StageSchedule, run_parameters


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
    client_train_mb: float = 0.0
    server_train_mb: float = 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _sample_batch(exp: Experiment, batch_size: int) -> dict[str, torch.Tensor]:
    """A batch of the right shapes: real test samples for the built-in data, zeros else
    (counting needs shapes only, and real datasets may not be on this machine). A batch
    larger than the built-in test split repeats its samples."""
    info = exp.info
    if info.name.startswith("synthetic-"):
        test = exp.test_set()
        return test.batch(np.arange(batch_size) % len(test))
    batch: dict[str, torch.Tensor] = {"label": torch.zeros(batch_size, dtype=torch.int64)}
    if "image" in info.modalities:
        batch["image"] = torch.zeros(batch_size, 3, info.image_size, info.image_size)
    if "audio" in info.modalities:
        batch["audio"] = torch.zeros(batch_size, info.audio_frames, 128)
    if "text" in info.modalities:
        batch["text"] = torch.zeros(batch_size, info.text_length, dtype=torch.int64)
    if exp.task.labels_are_pair_ids:
        batch["label"] = torch.arange(batch_size)  # every sample its own pair
    return batch


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and, if it calls it, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def training_step_cost(module: nn.Module, step: Callable[[], object]) -> tuple[int, int]:
    """FLOPs of one training step of ``module`` and the bytes it holds at its peak (see
    the module docstring): the weights it runs, grads and two AdamW moments of the
    trainable ones, and the tensors that ``step``'s forward saves for its backward
    (parameters not counted twice). Both from one run of ``step``."""
    params = list(run_parameters(module))
    param_ids = {id(p) for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) not in param_ids and id(base) not in param_ids:
            saved[id(t)] = _nbytes(t)
        return t

    with (
        FlopCounterMode(display=False) as counter,
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        step()
    weights = sum(_nbytes(p) for p in params)
    trainable = sum(_nbytes(p) for p in params if p.requires_grad)
    return int(counter.get_total_flops()), weights + 3 * trainable + sum(saved.values())


def _loss(exp: Experiment, model: SplitModel, out: torch.Tensor, batch) -> torch.Tensor:
    return exp.task.loss(out, labels=batch["label"], tail=model.server.tail)


def measure(
    exp: Experiment, batch_size: int = 2, device: str = "meta", stage: int = 0
) -> CostReport:
    """Trainable parameters, GFLOPs per sample and training memory of ``exp.cfg.strategy``
    (for ``lw-fedmml`` and ``prog-fedmml``: in ``stage``, 0-based).

    On the ``meta`` device (the default) every op runs on shapes only, so even ViT-H at
    224x224 is counted in a second; ``device="cpu"`` runs the real arithmetic.
    """
    with torch.device(device):
        head, server = build_head(exp.spec), build_server(exp.spec)
    model = SplitModel(head, server)
    spec = strategy_spec(exp.cfg.strategy)
    if spec.stages is not None:
        StageSchedule.from_config(exp.cfg).apply(model, stage)
    batch = {k: v.to(device) for k, v in _sample_batch(exp, batch_size).items()}
    strategy = exp.cfg.strategy

    acts = {k: v.detach() for k, v in head(batch).items()}
    with torch.no_grad():
        server_out = server(acts)  # logits, or (client tail) pooled embeddings

    def head_fwd() -> None:
        with torch.no_grad():
            head(batch)
            if head.classifier is not None:
                head.classify(server_out)

    def head_fwd_bwd() -> None:
        acts = head(batch)
        torch.autograd.backward(
            [a for a in acts.values() if a.requires_grad],
            [torch.ones_like(a) for a in acts.values() if a.requires_grad],
        )
        if head.classifier is not None:  # the client tail's loss leg
            embedding = server_out.clone().requires_grad_(True)
            _loss(exp, model, head.classify(embedding), batch).backward()

    def server_fwd() -> None:
        with torch.no_grad():
            server(acts)

    def server_fwd_bwd() -> None:
        inputs = {k: v.clone().requires_grad_(True) for k, v in acts.items()}
        out = server(inputs)
        if head.classifier is None:
            _loss(exp, model, out, batch).backward()
        else:  # driven by the gradient the client tail returns
            out.backward(torch.ones_like(out))

    def model_fwd() -> None:
        with torch.no_grad():
            model(batch)

    def model_fwd_bwd() -> None:
        loss = _loss(exp, model, model(batch), batch)
        if loss.requires_grad:
            loss.backward()

    g, mb = 1e9 * batch_size, 1e6
    if spec.side == "split":
        fwd = count_flops(head_fwd)
        head_flops, head_bytes = training_step_cost(head, head_fwd_bwd)
        server_flops, server_bytes = training_step_cost(server, server_fwd_bwd)
        return CostReport(
            strategy,
            count_trainable(head),
            count_trainable(server),
            fwd / g,
            (fwd + head_flops) / g,
            count_flops(server_fwd) / g,
            server_flops / g,
            head_bytes / mb,
            server_bytes / mb,
        )
    whole_fwd = count_flops(model_fwd) / g
    whole_flops, whole_bytes = training_step_cost(model, model_fwd_bwd)
    whole, memory = whole_flops / g, whole_bytes / mb
    if spec.side == "server":
        return CostReport(
            strategy, 0, count_trainable(model), 0.0, 0.0, whole_fwd, whole, 0.0, memory
        )
    return CostReport(strategy, count_trainable(model), 0, whole_fwd, whole, 0.0, 0.0, memory)


def run_costs(exp: Experiment, batch_size: int = 2) -> CostReport:
    """Costs of a whole run: for the staged strategies, GFLOPs averaged over the run's
    rounds (each round costs what its stage costs), parameters and memory at their peak;
    for the others, :func:`measure`."""
    if strategy_spec(exp.cfg.strategy).stages is None:
        return measure(exp, batch_size)
    schedule = StageSchedule.from_config(exp.cfg)
    stages = [schedule.stage_of(r) for r in range(1, exp.cfg.epochs + 1)]
    per_stage = {s: measure(exp, batch_size, stage=s) for s in set(stages)}
    rounds = [per_stage[s] for s in stages]
    return CostReport(
        exp.cfg.strategy,
        max(r.client_params for r in rounds),
        0,
        sum(r.client_gflops_fwd for r in rounds) / len(rounds),
        sum(r.client_gflops_fwd_bwd for r in rounds) / len(rounds),
        0.0,
        0.0,
        max(r.client_train_mb for r in rounds),
        0.0,
    )

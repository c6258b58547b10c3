"""Centralized training: the whole model in one process over the whole training split.

The reference point of every comparison: same model, initial weights, global batch,
optimiser, schedule and sample order as MPSL with one client (seed for seed, they end
with the same weights). Reachable as ``strategy=centralized`` through ``flwr run``
(it then ignores the grid) and as ``mpsl-centralized`` (``python -m mpsl_flwr.cli
centralized``).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from mpsl_flwr.checkpoint import Checkpointing, set_rng_state
from mpsl_flwr.data.partition import client_seed
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel
from mpsl_flwr.optim import make_optimizer, scheduled_lr
from mpsl_flwr.protocol.transport import TrafficMeter
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.state import model_arrays
from mpsl_flwr.trainer import train_epoch
from strategies.reporting import EpochEndFn, EvaluateFn, report_epoch

log = logging.getLogger("mpsl_flwr")


class Centralized:
    """Trains ``[head; server]`` on the pooled training split."""

    num_clients = 1

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.head, self.server_model = exp.initial_model()
        self.meter = TrafficMeter()  # nothing travels

    def start(
        self,
        grid: Grid | None = None,
        evaluate_fn: EvaluateFn | None = None,
        on_epoch_end: EpochEndFn | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> Result:
        """Train ``epochs`` passes over the pooled training split (checkpointed, resumable);
        ``grid`` is not used."""
        cfg, device = self.exp.cfg, self.exp.server_device
        optim = cfg.optim
        model = SplitModel(self.head, self.server_model).to(device)
        optimizer = make_optimizer(model.parameters(), optim)
        train = self.exp.train_set()
        rows = np.arange(len(train))
        steps = math.ceil(len(rows) / optim.batch_size)
        result = Result()
        first_epoch = 0
        if checkpointing is not None and checkpointing.resume:
            ckpt = checkpointing.load()
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"])
            first_epoch = int(ckpt["epoch"])
        for epoch in range(first_epoch, optim.epochs):
            t0 = time.time()

            def lr_at(step: int, e: int = epoch) -> float:
                return scheduled_lr(optim, e * steps + step, optim.epochs * steps)

            done = train_epoch(
                model,
                optimizer,
                train,
                rows,
                optim.batch_size,
                epoch,
                client_seed(cfg.seed, 0),
                lr_at,
                self.exp.task,
                device,
                desc=f"epoch {epoch + 1}/{optim.epochs}",
                show_progress=cfg.output.progress,
            )
            record = EpochRecord.of_training(
                epoch + 1,
                self.exp.task,
                done.loss,
                done.accuracy,
                steps=done.steps,
                samples_trained=done.samples,
                mb_down_per_client=0.0,
                mb_up_per_client=0.0,
                epoch_time_s=round(time.time() - t0, 3),
            )
            report_epoch(result, record, self.head, self.server_model, evaluate_fn, on_epoch_end)
            if checkpointing is not None:
                checkpointing.save_if_due(
                    epoch + 1,
                    lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                )
        result.arrays = model_arrays(self.head, self.server_model)
        return result

"""Centralized training: the whole model in one process over the whole training split.

The reference point of every comparison: same model, initial weights, global batch,
optimiser, schedule and sample order as MPSL with one client (seed for seed, they end
with the same weights). Reachable as ``strategy=centralized`` through ``flwr run``
(it then ignores the grid) and as ``python -m strategies.centralized``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result

from mpsl_flwr.data.partition import batch_indices, client_seed
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel
from mpsl_flwr.optim import make_optimizer, make_scheduler
from mpsl_flwr.progress import progress
from mpsl_flwr.state import model_arrays
from mpsl_flwr.trainer import train_step

log = logging.getLogger("mpsl_flwr")


class Centralized:
    """Trains ``[head; server]`` on the pooled training split."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.head, self.server_model = exp.initial_model()

    def start(
        self,
        evaluate_fn: Callable[[int, Any, Any], dict[str, Any]] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> Result:
        cfg, device = self.exp.cfg, self.exp.server_device
        model = SplitModel(self.head, self.server_model).to(device)
        optimizer = make_optimizer(model.parameters(), cfg)
        train = self.exp.train_set()
        n = len(train)
        steps = math.ceil(n / cfg.batch_size)
        scheduler = make_scheduler(optimizer, cfg, steps * cfg.epochs)
        shuffle_seed = client_seed(cfg.seed, 0)
        result = Result()
        for epoch in range(cfg.epochs):
            t0 = time.time()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = progress(range(steps), f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress)
            for step in bar:
                rows = batch_indices(n, epoch, shuffle_seed, step * cfg.batch_size, cfg.batch_size)
                batch = {k: v.to(device) for k, v in train.batch(rows).items()}
                loss, c, b = train_step(model, batch, optimizer, self.exp.spec.kind)
                scheduler.step()
                loss_sum, correct, seen = loss_sum + loss * b, correct + c, seen + b
            bar.close()
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train-loss": loss_sum / seen,
                "steps": steps,
            }
            if self.exp.spec.kind == "classification":
                row["train-accuracy"] = correct / seen
            row.update(
                {
                    "mb-down-per-client": 0.0,
                    "mb-up-per-client": 0.0,
                    "epoch-time-s": round(time.time() - t0, 3),
                }
            )
            if evaluate_fn is not None:
                metrics = evaluate_fn(epoch + 1, self.head, self.server_model)
                row.update(metrics)
                result.evaluate_metrics_serverapp[epoch + 1] = MetricRecord(
                    {k: float(v) for k, v in metrics.items()}
                )
            log.info("Epoch %d: %s", epoch + 1, row)
            if on_epoch_end is not None:
                on_epoch_end(row)
        result.arrays = model_arrays(self.head, self.server_model)
        return result


def main(argv: list[str] | None = None) -> None:
    """``python -m strategies.centralized [key=value ...]``: the same keys as flwr run."""
    from mpsl_flwr.config import resolve_config
    from strategies.runner import run_experiment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. epochs=2")
    args = parser.parse_args(argv)
    cfg = resolve_config(args.overrides).replace(strategy="centralized")
    run_experiment(cfg, grid=None)


if __name__ == "__main__":
    main()

"""End-of-epoch bookkeeping shared by every strategy: evaluate, record, log, hand on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result

from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel

log = logging.getLogger("mpsl_flwr")

EvaluateFn = Callable[[int, ClientHead, ServerModel], dict[str, Any]]
EpochEndFn = Callable[[dict[str, Any]], None]


def report_epoch(
    result: Result,
    row: dict[str, Any],
    head: ClientHead,
    server: ServerModel,
    evaluate_fn: EvaluateFn | None,
    on_epoch_end: EpochEndFn | None,
) -> dict[str, Any]:
    """Add test metrics of ``[head; server]`` to ``row``, store it in ``result``, pass it on."""
    epoch = int(row["epoch"])
    if evaluate_fn is not None:
        metrics = evaluate_fn(epoch, head, server)
        row.update(metrics)
        result.evaluate_metrics_serverapp[epoch] = MetricRecord(
            {k: float(v) for k, v in metrics.items()}
        )
    result.train_metrics_clientapp[epoch] = MetricRecord({"train-loss": float(row["train-loss"])})
    log.info(
        "Epoch %d: %s",
        epoch,
        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
    )
    if on_epoch_end is not None:
        on_epoch_end(row)
    return row

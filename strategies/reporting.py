"""End-of-epoch bookkeeping shared by every strategy: evaluate, record, log, hand on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result

from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.records import EpochRecord

log = logging.getLogger("mpsl_flwr")

EvaluateFn = Callable[[int, ClientHead, ServerModel], dict[str, Any]]
EpochEndFn = Callable[[EpochRecord], None]


def report_epoch(
    result: Result,
    record: EpochRecord,
    head: ClientHead,
    server: ServerModel,
    evaluate_fn: EvaluateFn | None,
    on_epoch_end: EpochEndFn | None,
) -> EpochRecord:
    """Add test metrics of ``[head; server]`` to ``record``, store it in ``result``, pass
    it on; returns the completed record."""
    epoch = record.epoch
    if evaluate_fn is not None:
        metrics = evaluate_fn(epoch, head, server)
        record = record.with_test(metrics)
        result.evaluate_metrics_serverapp[epoch] = MetricRecord(
            {k: float(v) for k, v in metrics.items()}
        )
    result.train_metrics_clientapp[epoch] = MetricRecord({"train-loss": float(record.train_loss)})
    log.info(
        "Epoch %d: %s",
        epoch,
        ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.to_row().items()
            if v is not None
        ),
    )
    if on_epoch_end is not None:
        on_epoch_end(record)
    return record

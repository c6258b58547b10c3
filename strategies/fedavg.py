"""Stock FedAvg (McMahan et al., 2017) on the same model, data and partitions as MPSL.

Flower's own :class:`flwr.serverapp.strategy.FedAvg`, configured, not re-implemented:
it exchanges exactly the parameters that MPSL trains (the client head, the last
``finetune-blocks`` blocks and the tail) and averages them weighted by samples. Each
client trains one local epoch per round (``clients/fedavg.py``), so one round is one
epoch and its curve lines up with MPSL's. Evaluation is centralized on the held-out
test split after every round, like MPSL's; bytes are measured on the actual messages.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from mpsl_flwr import protocol as P
from mpsl_flwr.checkpoint import Checkpointing
from mpsl_flwr.data.partition import client_batch_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel, load_trainable_state
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.state import from_array_record, model_arrays
from strategies.base import require_grid
from strategies.discovery import ClientInfo, discover_clients
from strategies.reporting import EpochEndFn, EvaluateFn, report_epoch

log = logging.getLogger("mpsl_flwr")


def _number(value: MetricRecordValues, key: str) -> int | float:
    """A scalar metric (a MetricRecord may hold lists too, which ``float()`` rejects)."""
    if isinstance(value, list):
        raise TypeError(f"metric {key!r} is a list, not a number.")
    return value


class FederatedAveraging:
    """Runs a FedAvg-family Flower strategy for ``epochs`` rounds and reports each round.

    Parameters
    ----------
    exp : Experiment
        Model spec (which parameters train and travel), data and evaluation.

    A subclass picks another Flower strategy with ``strategy_cls`` (a :class:`FedAvg`
    subclass) or overrides :meth:`make_strategy`.
    """

    strategy_cls: type[FedAvg] = FedAvg

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.head, self.server_model = exp.initial_model()
        self.clients: dict[int, ClientInfo] = {}
        self.meter = P.TrafficMeter()

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def make_strategy(self, **kwargs: Any) -> FedAvg:
        """The Flower strategy, built with the runner's settings (subclasses add theirs)."""
        return self.strategy_cls(**kwargs)

    def start(
        self,
        grid: Grid | None,
        evaluate_fn: EvaluateFn | None = None,
        on_epoch_end: EpochEndFn | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> Result:
        """Run ``epochs`` rounds of the Flower strategy (this family does not resume)."""
        grid = require_grid(grid, self.exp.cfg.strategy)
        cfg = self.exp.cfg
        metered = P.MeteredGrid(grid)
        self.meter = metered.meter
        self.clients = discover_clients(metered, P.Exchange(metered), cfg)
        nodes = len({c.node_id for c in self.clients.values()})
        b = client_batch_size(cfg.batch_size, len(self.clients))
        largest = max(c.num_examples for c in self.clients.values())
        round_timeout = cfg.step_timeout * max(1, math.ceil(largest / b))
        last_train: dict[str, float] = {}

        def train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
            aggregated = aggregate_metricrecords(records, key)
            last_train.clear()
            last_train.update({k: float(_number(v, k)) for k, v in aggregated.items()})
            last_train["samples-trained"] = float(
                sum(int(_number(next(iter(r.metric_records.values()))[key], key)) for r in records)
            )
            return aggregated

        strategy = self.make_strategy(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
            train_metrics_aggr_fn=train_metrics,
        )
        result = Result()
        clock: dict[str, Any] = {}

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            model = SplitModel(self.head, self.server_model)
            load_trainable_state(model, from_array_record(arrays))
            mb = metered.meter.mb_per_client(clock["bytes"], len(self.clients))
            record = EpochRecord.of_training(
                server_round,
                self.exp.task,
                last_train.get("train-loss", float("nan")),
                last_train.get("train-accuracy", float("nan")),
                samples_trained=int(last_train.get("samples-trained", 0)),
                mb_down_per_client=mb["mb-down-per-client"],
                mb_up_per_client=mb["mb-up-per-client"],
                epoch_time_s=round(time.time() - clock["t0"], 3),
            )
            record = report_epoch(
                result, record, self.head, self.server_model, evaluate_fn, on_epoch_end
            )
            clock.update(t0=time.time(), bytes=metered.meter.totals())
            return MetricRecord({k: float(v) for k, v in record.test.items()})

        clock.update(t0=time.time(), bytes=metered.meter.totals())
        flwr_result = strategy.start(
            grid=metered,
            initial_arrays=model_arrays(self.head, self.server_model),
            num_rounds=cfg.epochs,
            timeout=round_timeout,
            train_config=ConfigRecord({"batch-size": b}),
            evaluate_fn=evaluate,
        )
        result.arrays = flwr_result.arrays
        return result

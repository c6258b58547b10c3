"""Run one experiment: set up, train with the chosen strategy, record, summarise.

The ServerApp and the plain Python entry points both come through here, so every path
writes the same files (see :mod:`mpsl_flwr.results`).
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from mpsl_flwr.checkpoint import Checkpointer, Checkpointing
from mpsl_flwr.config import RunConfig
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.results import RunRecorder, format_table
from mpsl_flwr.staging import STAGED_STRATEGIES
from strategies.reporting import EpochEndFn

log = logging.getLogger("mpsl_flwr")


def setup_logging() -> None:
    """Show mpsl_flwr's INFO logs on stdout (Flower streams the ServerApp's output)."""
    logger = logging.getLogger("mpsl_flwr")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_experiment(cfg: RunConfig, grid: Grid | None) -> Path:
    """Train with ``cfg.strategy``; returns the run directory."""
    setup_logging()
    exp = Experiment.from_config(cfg)
    recorder = RunRecorder(cfg, headline=exp.task.headline)
    try:
        final = _dispatch(exp, grid, recorder)
    except BaseException as err:
        recorder.fail(err)
        raise
    # Peak resident memory of the process that ran the server side (the ServerApp
    # process under `flwr run`); Linux reports kilobytes.
    recorder.update(
        **{
            "server-peak-rss-mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            )
        }
    )
    recorder.finish(final)
    print("\n" + format_table(recorder.history, exp.task.table_columns), flush=True)
    print(f"\nResults: {recorder.dir}", flush=True)
    return recorder.dir


def _dispatch(exp: Experiment, grid: Grid | None, recorder: RunRecorder) -> dict[str, Any]:
    cfg = exp.cfg
    checkpointing = Checkpointing(
        Checkpointer(recorder.dir, cfg), lambda: list(recorder.history), recorder.restore
    )

    def evaluate(epoch: int, head, server) -> dict[str, Any]:
        return exp.evaluate(head, server)

    if cfg.strategy == "centralized":
        from strategies.centralized import Centralized

        strategy = Centralized(exp)
        counts = exp.parameter_counts(strategy.head, strategy.server_model)
        recorder.update(
            **{
                "num-clients": 1,
                "client-trainable-params": 0,
                "server-trainable-params": sum(counts.values()),
            }
        )
        strategy.start(evaluate, recorder.log_epoch, checkpointing)
    elif cfg.strategy == "mpsl":
        from strategies.mpsl import MPSL

        if grid is None:
            raise ValueError("strategy=mpsl needs a Flower grid: run it with `flwr run`.")
        head, server = exp.initial_model()
        mpsl = MPSL(cfg, exp.spec, head, server)
        recorder.update(**exp.parameter_counts(head, server))
        mpsl.start(grid, evaluate, _with_clients(recorder, mpsl), checkpointing)
    elif cfg.strategy in ("fedavg", "fedclip", *STAGED_STRATEGIES):
        from flwr.serverapp.strategy import FedAvg

        from strategies.fedavg import FederatedAveraging
        from strategies.fedclip import FedCLIP
        from strategies.staged import StagedTraining

        if grid is None:
            raise ValueError(
                f"strategy={cfg.strategy} needs a Flower grid: run it with `flwr run`."
            )
        if cfg.strategy in STAGED_STRATEGIES:
            runner = StagedTraining(exp)
        else:
            runner = FederatedAveraging(exp, FedCLIP if cfg.strategy == "fedclip" else FedAvg)
        recorder.update(**_client_side_counts(exp, runner.head, runner.server_model))
        runner.start(grid, evaluate, _with_clients(recorder, runner))
    else:  # pragma: no cover - RunConfig validates the choices
        raise ValueError(f"unknown strategy {cfg.strategy!r}")
    last = recorder.history[-1] if recorder.history else {}
    return {k: v for k, v in last.items() if k.startswith("test-")}


def _client_side_counts(exp: Experiment, head, server) -> dict[str, int]:
    """FedAvg family: the client trains (and sends) everything that is trainable."""
    counts = exp.parameter_counts(head, server)
    return {
        "client-trainable-params": counts["client-trainable-params"]
        + counts["server-trainable-params"],
        "server-trainable-params": 0,
    }


def _with_clients(recorder: RunRecorder, mpsl) -> EpochEndFn:
    def on_epoch_end(record: EpochRecord) -> None:
        if recorder.summary.get("num-clients") is None:
            recorder.update(**{"num-clients": len(mpsl.clients)})
        recorder.log_epoch(record)

    return on_epoch_end

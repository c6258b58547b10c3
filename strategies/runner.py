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
from mpsl_flwr.preflight import check_partitions, check_server
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.results import RunRecorder, format_table
from strategies import load_runner

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
    exp = check_server(cfg)
    if grid is not None:  # nodes still registering only add to the count
        check_partitions(exp, len(list(grid.get_node_ids())) * cfg.clients_per_node)
    chance = exp.task.chance(exp.info.num_classes)
    # The recorder marks the run failed on an error.
    with RunRecorder(cfg, headline=exp.task.headline, chance=chance) as recorder:
        recorder.update(chance=chance)
        if grid is not None:  # so a launcher finds the directory its own run wrote
            recorder.update(**{"flwr-run-id": grid.run.run_id})
        checkpointing = Checkpointing(
            Checkpointer(recorder.dir, cfg), lambda: list(recorder.history), recorder.restore
        )
        if cfg.resume:
            checkpointing.checkpointer.load()  # refuse a bad resume before anything starts
        final = _dispatch(exp, grid, recorder, checkpointing)
        # Peak resident memory of the process that ran the server side (the ServerApp
        # process under `flwr run`); Linux reports kilobytes.
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        recorder.update(**{"server-peak-rss-mb": round(rss_mb, 1)})
        recorder.finish(final)
    print("\n" + format_table(recorder.history, exp.task.table_columns), flush=True)
    print(f"\nResults: {recorder.dir}", flush=True)
    return recorder.dir


def _dispatch(
    exp: Experiment, grid: Grid | None, recorder: RunRecorder, checkpointing: Checkpointing
) -> dict[str, Any]:
    cfg = exp.cfg

    def evaluate(epoch: int, head, server) -> dict[str, Any]:
        return exp.evaluate(head, server)

    spec = strategy_spec(cfg.strategy)
    runner = load_runner(spec)(exp)
    recorder.update(**exp.parameter_counts(runner.head, runner.server_model))

    def on_epoch_end(record: EpochRecord) -> None:
        if recorder.summary.get("num-clients") is None:
            recorder.update(**{"num-clients": runner.num_clients})
        recorder.log_epoch(record)
        if record.samples_trained == 0:  # None: a strategy that does not count samples
            raise RuntimeError(
                f"Epoch {record.epoch} trained no sample: every client was dropped or had "
                "no data left (see the warnings above), so the run stops instead of "
                "reporting an untrained model."
            )

    runner.start(grid, evaluate, on_epoch_end, checkpointing if spec.resumable else None)
    last = recorder.history[-1] if recorder.history else {}
    return {k: v for k, v in last.items() if k.startswith("test-")}

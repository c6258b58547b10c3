"""The ServerApp: reads the run config and runs the strategy it names."""

from __future__ import annotations

import torch  # noqa: F401 - Flower needs torch imported where ArrayRecords are built
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mpsl_flwr.config import RunConfig
from strategies.runner import run_experiment, setup_logging

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``strategy`` with the run config; results go to ``<output-dir>/<run-name>``."""
    setup_logging()
    run_experiment(RunConfig.from_mapping(context.run_config), grid)

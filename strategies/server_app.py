"""The ServerApp: reads the run config and runs the strategy it names."""

from __future__ import annotations

import logging

import torch  # noqa: F401 - Flower needs torch imported where ArrayRecords are built
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mpsl_flwr.config import RunConfig
from mpsl_flwr.user_errors import USER_ERRORS, headline
from strategies.runner import run_experiment, setup_logging

app = ServerApp()
log = logging.getLogger("mpsl_flwr")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``strategy`` with the run config; results go to ``<output-dir>/<run-name>``.

    A user error (bad run config, missing dataset) is logged as one line; it is raised
    again without its traceback, so that Flower marks the run failed with that message
    and does not bury it under the frames of the code that found it.
    """
    setup_logging()
    try:
        run_experiment(RunConfig.from_mapping(context.run_config), grid)
    except USER_ERRORS as err:
        log.error("mpsl-flwr: error: %s", headline(err))
        raise err.with_traceback(None) from None

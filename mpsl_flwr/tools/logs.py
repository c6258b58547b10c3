"""Quieter logs while a measurement tool runs, and the levels as they were afterwards.

The tools run many short trainings whose per-epoch INFO lines would bury their own
output. They are also called in process (tests, notebooks), where a level left changed
would silence the caller's warnings too, so the levels are restored on the way out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(mpsl_level: int = logging.WARNING, flwr_level: int = logging.ERROR) -> Iterator[None]:
    """Set the ``mpsl_flwr`` and ``flwr`` loggers' levels for the block, then restore them."""
    loggers = {logging.getLogger("mpsl_flwr"): mpsl_level, logging.getLogger("flwr"): flwr_level}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)

"""The errors that are the user's to fix, and how a command or the ServerApp shows them.

A bad run-config value (:class:`~mpsl_flwr.config.ConfigError`) or a dataset that is not
where ``data-dir`` says (:class:`~mpsl_flwr.data.errors.DatasetError`) is a message for
the user, not a bug: it is shown as one line, without the traceback, by every installed
command (:mod:`mpsl_flwr.cli`, which shows the traceback with ``--debug``) and logged as
one line by the ServerApp.
"""

from __future__ import annotations

from mpsl_flwr.config import ConfigError
from mpsl_flwr.data.errors import DatasetError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DatasetError)


def headline(err: BaseException) -> str:
    """The first line of ``err``'s message (dataset errors append the expected tree)."""
    return str(err).strip().split("\n", 1)[0]

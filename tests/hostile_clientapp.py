"""A test-only ClientApp: the real one, except that one virtual node kills its own process.

:func:`write_app` copies the project into a directory whose ``pyproject.toml`` names this
module's ``app`` as the ClientApp, so that ``flwr run`` on that directory runs it. Which
node dies, on which message and how often is read from ``hostile.json`` next to this
module in the installed app (``partition-id``, ``message-type``, ``times``); each death
leaves a file ``<node id>-<message id>`` in ``deaths-dir``, outside the app (that is how
a later process knows how many happened).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.client_app import app as real_app

SETTINGS = Path(__file__).with_name("hostile.json")
PACKAGES = ("mpsl_flwr", "strategies", "clients")
REAL_COMPONENT = 'clientapp = "clients.client_app:app"'


class DyingClientApp(ClientApp):
    """Exits its process (``os._exit``, as a segfault or the OOM killer would end it) on
    the configured message of the configured node, ``times`` times; otherwise the real
    ClientApp answers."""

    def __call__(self, message: Message, context: Context) -> Message:
        settings = json.loads(SETTINGS.read_text())
        deaths = Path(settings["deaths-dir"])
        if (
            int(context.node_config["partition-id"]) == settings["partition-id"]
            and message.metadata.message_type == settings["message-type"]
            and len(list(deaths.glob("*"))) < settings["times"]
        ):
            (deaths / f"{context.node_id}-{message.metadata.message_id}").touch()
            os._exit(1)
        return real_app(message, context)


app = DyingClientApp()


def write_app(
    project: Path, target: Path, partition_id: int, message_type: str, times: int = 1
) -> Path:
    """A copy of ``project`` in ``target`` whose ClientApp is :data:`app`."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in PACKAGES:
        shutil.copytree(project / package, target / package, ignore=ignore)
    pyproject = (project / "pyproject.toml").read_text()
    if REAL_COMPONENT not in pyproject:
        raise RuntimeError(f"{project / 'pyproject.toml'} has no {REAL_COMPONENT!r}")
    component = 'clientapp = "hostile_clientapp:app"'
    (target / "pyproject.toml").write_text(pyproject.replace(REAL_COMPONENT, component))
    shutil.copy(__file__, target / "hostile_clientapp.py")
    deaths = target / "deaths"
    deaths.mkdir()
    settings = {
        "partition-id": partition_id,
        "message-type": message_type,
        "times": times,
        "deaths-dir": str(deaths),
    }
    (target / "hostile.json").write_text(json.dumps(settings))
    return target

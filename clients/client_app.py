"""The ClientApp: registers the message handlers of every strategy in the registry.

A message type is ``<train|evaluate|query>[.<action>]``; each strategy's client module
(named by its :data:`mpsl_flwr.registry.STRATEGIES` entry) maps the types it answers to
handlers in ``HANDLERS``; the server-side strategy chosen by run-config ``strategy``
decides which of them a node receives. ``query.info`` (discovery) serves them all.
"""

from __future__ import annotations

import importlib

import torch  # noqa: F401 - Flower needs torch imported where ArrayRecords are built
from flwr.clientapp import ClientApp

from clients import discovery
from mpsl_flwr.registry import STRATEGIES

app = ClientApp()

_modules = dict.fromkeys(s.client for s in STRATEGIES.values() if s.client is not None)
for handlers in [discovery.HANDLERS] + [importlib.import_module(m).HANDLERS for m in _modules]:
    for message_type, handler in handlers.items():
        category, _, action = message_type.partition(".")
        register = getattr(app, category)
        (register(action) if action else register())(handler)

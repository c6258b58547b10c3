"""The ClientApp: registers every strategy's message handlers.

A message type is ``<train|evaluate|query>.<action>``; the server-side strategy chosen
by run-config ``strategy`` decides which of them a node receives.
"""

from __future__ import annotations

import torch  # noqa: F401 - Flower needs torch imported where ArrayRecords are built
from flwr.clientapp import ClientApp

from clients import discovery, fedavg, mpsl

app = ClientApp()

for handlers in (discovery.HANDLERS, mpsl.HANDLERS):
    for message_type, handler in handlers.items():
        category, action = message_type.split(".")
        getattr(app, category)(action)(handler)
app.train()(fedavg.train)

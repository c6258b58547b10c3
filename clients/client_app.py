"""The ClientApp: registers every strategy's message handlers.

A message type is ``<train|evaluate|query>.<action>``; the server-side strategy chosen
by run-config ``strategy`` decides which of them a node receives.
"""

from __future__ import annotations

import torch  # noqa: F401 - Flower needs torch imported where ArrayRecords are built
from flwr.clientapp import ClientApp

from clients import fedavg, mpsl

app = ClientApp()

app.query("info")(mpsl.query_info)
app.train("forward")(mpsl.forward)
app.train("loss")(mpsl.loss)
app.train("backward")(mpsl.backward)
app.query("head")(mpsl.query_head)
app.query("state")(mpsl.query_state)
app.train()(fedavg.train)

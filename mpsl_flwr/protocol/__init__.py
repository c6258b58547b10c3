"""The messages between the server and the clients, and how they travel.

* :mod:`~mpsl_flwr.protocol.transport`: the exchange loop (one message in flight per
  node, replies matched by message id, a timeout per leg) and the traffic meter.
* :mod:`~mpsl_flwr.protocol.discovery`: ``query.info``, which logical clients a node
  serves (every federated strategy starts with it).
* :mod:`~mpsl_flwr.protocol.mpsl`: the MPSL legs, each with both halves side by side:
  what the server sends, how the client reads it, what the client replies, and how the
  server reads and checks that reply before anything of it touches the server model.

* :mod:`~mpsl_flwr.protocol.packing`: the wire form of the cut-layer tensors: one array
  per stream for all of a node's clients, in float32, float16 or bfloat16.

Clients are named by *logical client id* (the data partition), not by Flower node id, so
one node may serve several clients in one message.
"""

from mpsl_flwr.protocol.mpsl import (
    ACT,
    BACKWARD,
    CONFIG,
    FORWARD,
    GRAD,
    LOSS,
    QUERY_HEAD,
    QUERY_STATE,
    BatchPlan,
    read_plans,
)
from mpsl_flwr.protocol.transport import Exchange, MeteredGrid, TrafficMeter

__all__ = [
    "ACT",
    "BACKWARD",
    "CONFIG",
    "FORWARD",
    "GRAD",
    "LOSS",
    "QUERY_HEAD",
    "QUERY_STATE",
    "BatchPlan",
    "Exchange",
    "MeteredGrid",
    "TrafficMeter",
    "read_plans",
]

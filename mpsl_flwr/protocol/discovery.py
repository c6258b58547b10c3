"""``query.info``: which logical clients a node serves, and how much data each holds.

Every federated strategy starts with it (:mod:`strategies.discovery` asks, the ClientApp's
``query.info`` handler answers). Both halves of the leg are here, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

QUERY_INFO = "query.info"
INFO = "info"


@dataclass(frozen=True)
class NodeInfo:
    """What a node announces: its logical clients, their partition sizes, the total count."""

    clients: list[int]
    num_examples: list[int]
    num_clients: int


# Server -> node: an empty question.
def info_request() -> RecordDict:
    return RecordDict()


# Node -> server: the answer.
def info_reply(info: NodeInfo) -> RecordDict:
    record = ConfigRecord(
        {
            "clients": info.clients,
            "num-examples": info.num_examples,
            "num-clients": info.num_clients,
        }
    )
    return RecordDict({INFO: record})


def read_info_reply(content: RecordDict) -> NodeInfo:
    info = content[INFO]
    return NodeInfo(
        clients=[int(c) for c in info["clients"]],  # type: ignore[union-attr]
        num_examples=[int(n) for n in info["num-examples"]],  # type: ignore[union-attr]
        num_clients=int(info["num-clients"]),  # type: ignore[arg-type]
    )

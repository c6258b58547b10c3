"""``query.info``: which logical clients a node serves, and how much data each holds.

Every federated strategy starts with it (:mod:`strategies.discovery` asks, the ClientApp's
``query.info`` handler answers). Both halves of the leg are here, side by side; the
server's half checks the answer (:mod:`mpsl_flwr.protocol.gate`) before it is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

from mpsl_flwr.protocol.gate import PayloadError, count_value, int_list, typed_record

QUERY_INFO = "query.info"
INFO = "info"


@dataclass(frozen=True)
class NodeInfo:
    """What a node announces: its logical clients, their partition sizes, the total count."""

    clients: list[int]
    num_examples: list[int]
    num_clients: int


def info_request() -> RecordDict:
    """Server -> node: an empty question."""
    return RecordDict()


def info_reply(info: NodeInfo) -> RecordDict:
    """Node -> server: the answer."""
    record = ConfigRecord(
        {
            "clients": info.clients,
            "num-examples": info.num_examples,
            "num-clients": info.num_clients,
        }
    )
    return RecordDict({INFO: record})


def read_info_reply(content: RecordDict, max_partition_size: int) -> NodeInfo:
    """Server: a node's answer, checked (raises :class:`PayloadError` naming the problem).

    ``info`` must be a ConfigRecord of an integer list ``clients`` (distinct ids in
    ``[0, num-clients)``), an integer list ``num-examples`` of the same length with every
    entry in ``[0, max-partition-size]``, and an integer ``num-clients >= 1``. The cap on
    partition sizes bounds the epoch a node can make the server run (steps per epoch
    follow the largest partition).
    """
    info = typed_record(content, INFO, ConfigRecord)
    clients = int_list(info, "clients")
    sizes = int_list(info, "num-examples")
    num_clients = count_value(info, "num-clients", 1, 2**31 - 1)
    if len(sizes) != len(clients):
        raise PayloadError(f"'num-examples' has {len(sizes)} entries for {len(clients)} clients")
    if len(set(clients)) != len(clients) or not all(0 <= c < num_clients for c in clients):
        raise PayloadError(f"'clients' {clients} are not distinct ids in [0, {num_clients})")
    for cid, n in zip(clients, sizes, strict=True):
        if not 0 <= n <= max_partition_size:
            raise PayloadError(
                f"client {cid} claims {n} samples, outside [0, max-partition-size="
                f"{max_partition_size}]"
            )
    return NodeInfo(clients, sizes, num_clients)

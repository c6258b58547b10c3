"""Who takes part in an MPSL run: the logical clients, their nodes, and their heads.

The roster starts from discovery (``query.info``) and follows membership during the run:
a SuperNode that died and came back has a new node id, so an online node not seen before
is asked which clients it serves, and those clients move to it. The roster also owns head
sync: which node still needs the aggregated head (sent with its next ``train.forward``),
and the FedAvg of the heads at the end of an epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.split_model import load_trainable_state, trainable_state
from mpsl_flwr.protocol import discovery as D
from mpsl_flwr.protocol.transport import Exchange, make_messages, nodes_of, reply_error
from mpsl_flwr.state import from_array_record, to_array_record
from strategies.discovery import ClientInfo

log = logging.getLogger("mpsl_flwr")


class Roster:
    """Logical clients by id, the node serving each, and the head-sync bookkeeping."""

    def __init__(self, clients: dict[int, ClientInfo], head: ClientHead) -> None:
        self.clients = clients
        self.head = head
        self.head_record: ArrayRecord | None = to_array_record(trainable_state(head))
        self._synced: set[int] = set()  # nodes that hold head_record
        self._rejoined: set[int] = set()  # nodes owed the current head
        self._moved: set[int] = set()  # clients that changed node since their last batch
        self._foreign: set[int] = set()  # nodes serving no client of this run

    def by_node(self, cids: Iterable[int]) -> dict[int, list[int]]:
        """``cids`` grouped by the node that serves them (sorted)."""
        return nodes_of(cids, {c: i.node_id for c, i in self.clients.items()})

    def node_of(self, cid: int) -> int:
        return self.clients[cid].node_id

    # ------------------------------------------------------------------ membership
    def refresh(self, grid: Grid, exchange: Exchange, timeout: float, ttl: float) -> set[int]:
        """Online node ids; a node not seen before is asked which clients it serves."""
        online = set(grid.get_node_ids())
        known = {c.node_id for c in self.clients.values()}
        new = online - known - self._foreign - exchange.busy_nodes()
        if not new:
            return online
        messages = make_messages({n: D.info_request() for n in new}, D.QUERY_INFO, "rejoin", ttl)
        replies, _ = exchange(messages, timeout)
        for node_id, reply in replies.items():
            if reply_error(reply) is not None:
                continue  # asked again at the next step
            cids = D.read_info_reply(reply.content).clients
            unknown = [c for c in cids if c not in self.clients]
            if unknown:
                log.warning("Node %d serves unknown clients %s; it is ignored.", node_id, unknown)
                self._foreign.add(node_id)
                continue
            for cid in cids:
                log.warning(
                    "Client %d rejoined on node %d (was node %d).",
                    cid,
                    node_id,
                    self.clients[cid].node_id,
                )
                self.clients[cid].node_id = node_id
                self._moved.add(cid)
            self._rejoined.add(node_id)
        return online

    def take_moved(self) -> set[int]:
        """Clients that changed node since the last call (their prefetched batch is void)."""
        moved, self._moved = self._moved, set()
        return moved

    # ------------------------------------------------------------------ head sync
    def head_for(self, node_id: int) -> ArrayRecord | None:
        """The head a node must load before its next batch, if it is owed one."""
        if node_id in self._rejoined:
            return to_array_record(trainable_state(self.head))
        if self.head_record is not None and node_id not in self._synced:
            return self.head_record
        return None

    def heard_from(self, node_ids: Iterable[int]) -> None:
        """These nodes answered a ``train.forward``: they now hold the head sent."""
        node_ids = set(node_ids)
        self._synced.update(node_ids)
        self._rejoined.difference_update(node_ids)

    def push_head(self) -> None:
        """``head-sync=push``: every node gets the current head with its next batch."""
        self.head_record = to_array_record(trainable_state(self.head))
        self._synced = set()

    def average_heads(self, heads: dict[int, ArrayRecord], seen: dict[int, int]) -> bool:
        """FedAvg of the clients' heads, weighted by samples seen, into ``self.head``.

        Summed in client order, not arrival order, so the average is reproducible.
        """
        records = [
            RecordDict({"arrays": heads[cid], "metrics": MetricRecord({"num-examples": seen[cid]})})
            for cid in sorted(heads)
        ]
        if not records:
            return False
        avg = aggregate_arrayrecords(records, "num-examples")
        load_trainable_state(self.head, from_array_record(avg))
        return True

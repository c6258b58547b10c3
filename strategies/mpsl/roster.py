"""Who takes part in an MPSL run: the logical clients, their nodes, and their heads.

The roster starts from discovery (``query.info``) and follows membership during the run:
a SuperNode that died and came back has a new node id, so an online node not seen before
is asked which clients it serves, and those clients move to it once their old node is
gone from the node list (never while it is still online), and, with a node-key registry,
only to the node registered for them. The roster also owns head
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
from mpsl_flwr.node_registry import NodeRegistry
from mpsl_flwr.protocol import discovery as D
from mpsl_flwr.protocol.gate import PayloadError
from mpsl_flwr.protocol.transport import Exchange, make_messages, nodes_of, reply_error
from mpsl_flwr.state import from_array_record, to_array_record
from strategies.discovery import ClientInfo

log = logging.getLogger("mpsl_flwr")


class Roster:
    """Logical clients by id, the node serving each, and the head-sync bookkeeping."""

    def __init__(
        self,
        clients: dict[int, ClientInfo],
        head: ClientHead,
        registry: NodeRegistry | None = None,
    ) -> None:
        self.clients = clients
        self.head = head
        self.registry = registry
        self.head_record: ArrayRecord | None = to_array_record(trainable_state(head))
        self._synced: set[int] = set()  # nodes that hold head_record
        self._rejoined: set[int] = set()  # nodes owed the current head
        self._moved: set[int] = set()  # clients that changed node since their last batch
        self._foreign: set[int] = set()  # nodes serving no client of this run
        self._refused: set[int] = set()  # nodes claiming clients whose node is still online

    def by_node(self, cids: Iterable[int]) -> dict[int, list[int]]:
        """``cids`` grouped by the node that serves them (sorted)."""
        return nodes_of(cids, {c: i.node_id for c, i in self.clients.items()})

    def node_of(self, cid: int) -> int:
        return self.clients[cid].node_id

    def node_name(self, node_id: int) -> str:
        """``node <id> (clients 3, 4)``: a node as a warning names it, by the logical
        clients it serves (Flower's 19-digit ids alone say nothing to a reader)."""
        cids = sorted(c for c, i in self.clients.items() if i.node_id == node_id)
        served = f"client {cids[0]}" if len(cids) == 1 else f"clients {_span(cids)}"
        return f"node {node_id} ({served if cids else 'no clients'})"

    # ------------------------------------------------------------------ membership
    def refresh(
        self, grid: Grid, exchange: Exchange, timeout: float, ttl: float, max_partition_size: int
    ) -> set[int]:
        """Online node ids; a node not seen before is asked which clients it serves.

        A client moves to the new node only if its old node is gone: off the SuperLink's
        node list, or silent (it holds a message the server gave up on after
        ``step-timeout``; a SuperNode killed in deployment stays listed until its
        heartbeat expires, up to 60 s in Flower 1.41). A restarted SuperNode gets a new
        id; a second node claiming a client whose node still answers is an impostor or a
        misconfiguration, and is refused until that node is gone. A node whose answer
        fails the gate, that serves clients outside the run, or that claims a client the
        node registry gives to another node, is ignored for good.
        """
        online = set(grid.get_node_ids())
        busy = exchange.busy_nodes()
        known = {c.node_id for c in self.clients.values()}
        new = online - known - self._foreign - busy
        if not (known - online) | (known & busy):
            new -= self._refused  # their clients' nodes are all still there and answering
        if not new:
            return online
        messages = make_messages({n: D.info_request() for n in new}, D.QUERY_INFO, "rejoin", ttl)
        replies, _ = exchange(messages, timeout)
        for node_id in sorted(replies):
            if reply_error(replies[node_id]) is not None:
                continue  # asked again at the next step
            try:
                cids = D.read_info_reply(replies[node_id].content, max_partition_size).clients
            except PayloadError as err:
                log.warning(
                    "Node %d sent a bad query.info reply (%s); it is ignored.", node_id, err
                )
                self._foreign.add(node_id)
                continue
            if self._admit(node_id, cids, online - busy):
                self._refused.discard(node_id)
            else:
                self._refused.add(node_id)
        return online

    def _admit(self, node_id: int, cids: list[int], answering: set[int]) -> bool:
        """Move ``cids`` to ``node_id`` if they are clients of the run whose old node is gone
        (not in ``answering``: listed and holding no message the server gave up on)."""
        unknown = [c for c in cids if c not in self.clients]
        if unknown:
            log.warning("Node %d serves unknown clients %s; it is ignored.", node_id, unknown)
            self._foreign.add(node_id)
            return True
        if self.registry is not None and (why := self.registry.refusal(node_id, cids)):
            log.warning("%s; node %d is refused.", why, node_id)
            self._foreign.add(node_id)
            return True
        for cid in cids:
            if (old := self.clients[cid].node_id) in answering:
                log.warning(
                    "Node %d claims client %d, which node %d still serves (online); refused "
                    "until node %d is gone.",
                    node_id,
                    cid,
                    old,
                    old,
                )
                return False
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
        return True

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


def _span(cids: list[int], shown: int = 6) -> str:
    """``3, 4, 5`` or, for many, ``0, 1, 2, 3, 4, 5 ... (250 in all)``."""
    head = ", ".join(map(str, cids[:shown]))
    return head if len(cids) <= shown else f"{head} ... ({len(cids)} in all)"

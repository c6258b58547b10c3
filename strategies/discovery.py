"""Find the logical clients of a federation before training starts.

Every strategy first asks each node (``query.info``) which logical clients it serves and
how many training samples each holds. The ServerApp may start before every virtual or
real SuperNode has registered, so this waits for all the partitions the nodes announce;
what a node announces is checked, and a client id is bound to the first node claiming it,
or, with a node-key registry (``node-registry``), only to the node registered for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

from mpsl_flwr.config import RunConfig
from mpsl_flwr.node_registry import NodeRegistry
from mpsl_flwr.protocol import discovery as D
from mpsl_flwr.protocol.gate import PayloadError
from mpsl_flwr.protocol.transport import Exchange, make_messages, reply_error

log = logging.getLogger("mpsl_flwr")


@dataclass
class ClientInfo:
    """A logical client as its node announced it."""

    cid: int
    node_id: int
    num_examples: int


def message_ttl(cfg: RunConfig) -> float:
    """Lifetime of a message: long enough to outlive a slow step, short enough to expire."""
    return max(60.0, 3 * cfg.step_timeout)


def discover_clients(
    grid: Grid, exchange: Exchange, cfg: RunConfig, registry: NodeRegistry | None = None
) -> dict[int, ClientInfo]:
    """Ask every node which logical clients it serves; wait for all of them.

    Waits until every partition the nodes announce has reported or, when ``min-nodes``
    is set, that many nodes have. Past ``node-wait-timeout`` it goes on with the clients
    it has (an error if none).

    Nodes are not trusted (docs/security.md). A node whose answer fails the gate
    (:func:`~mpsl_flwr.protocol.discovery.read_info_reply`: types, lengths, partition
    sizes up to ``max-partition-size``) is refused, as is a node that claims a client
    already bound to another node: each client id is bound to the first node that claims
    it (answers of one poll in node-id order). With a node registry (``registry``, or
    else the file ``node-registry`` names) a node may claim only the clients it lists for
    that node, whoever answers first. ``num-clients`` decides how long to wait, so one
    node's claim must not decide it: the count the most nodes agree on is believed (ties:
    the smaller), so a minority of lying nodes can neither stall discovery until
    ``node-wait-timeout`` nor end it early.
    """
    if registry is None:
        registry = NodeRegistry.from_config(cfg.node_registry)
    deadline = time.monotonic() + cfg.node_wait_timeout
    clients: dict[int, ClientInfo] = {}
    asked: set[int] = set()
    claims: dict[int, int] = {}  # node id -> the num-clients it announced
    errors: list[str] = []
    while True:
        new_nodes = [n for n in grid.get_node_ids() if n not in asked]
        if new_nodes:
            contents = {n: D.info_request() for n in new_nodes}
            replies, _ = exchange(
                make_messages(contents, D.QUERY_INFO, "info", message_ttl(cfg)),
                cfg.step_timeout,
            )
            asked.update(replies)
            for node_id in sorted(replies):
                info = _checked_info(node_id, replies[node_id], clients, cfg, registry, errors)
                if info is None:
                    continue
                claims[node_id] = info.num_clients
                for cid, n in zip(info.clients, info.num_examples, strict=True):
                    clients[cid] = ClientInfo(cid, node_id, n)
        expected = _agreed(claims.values())
        nodes_ok = len({c.node_id for c in clients.values()})
        if cfg.min_nodes and nodes_ok >= cfg.min_nodes:
            break
        if not cfg.min_nodes and expected is not None and len(clients) >= expected:
            break
        if time.monotonic() > deadline:
            if not clients:
                detail = "; ".join(errors) or "no node registered"
                raise RuntimeError(
                    f"No client answered within node-wait-timeout "
                    f"({cfg.node_wait_timeout:.0f}s): {detail}"
                )
            log.warning(
                "Starting with %d of %s clients after node-wait-timeout.", len(clients), expected
            )
            break
        time.sleep(0.2)
    log.info(
        "%d clients on %d nodes, %d training samples in all",
        len(clients),
        len({c.node_id for c in clients.values()}),
        sum(c.num_examples for c in clients.values()),
    )
    return clients


def _checked_info(
    node_id: int,
    reply: Message,
    clients: dict[int, ClientInfo],
    cfg: RunConfig,
    registry: NodeRegistry | None,
    errors: list[str],
) -> D.NodeInfo | None:
    """A node's ``query.info`` answer if it may be believed; else None, with a warning."""
    if (err := reply_error(reply)) is not None:
        errors.append(f"node {node_id}: {err}")
        log.warning("Node %s failed query.info: %s", node_id, err)
        return None
    try:
        info = D.read_info_reply(reply.content, cfg.max_partition_size)
    except PayloadError as err:
        errors.append(f"node {node_id}: bad query.info reply ({err})")
        log.warning("Node %d sent a bad query.info reply (%s); it is refused.", node_id, err)
        return None
    if registry is not None and (why := registry.refusal(node_id, info.clients)):
        errors.append(why)
        log.warning("%s; node %d is refused.", why, node_id)
        return None
    for cid in info.clients:
        if cid in clients and clients[cid].node_id != node_id:
            log.warning(
                "Node %d claims client %d, which node %d already serves; node %d is refused "
                "(a client id is bound to the first node that claims it).",
                node_id,
                cid,
                clients[cid].node_id,
                node_id,
            )
            return None
    return info


def _agreed(claims: Iterable[int]) -> int | None:
    """The ``num-clients`` the most nodes announced (ties: the smallest); None if none."""
    counts = Counter(claims)
    if not counts:
        return None
    return min(counts, key=lambda n: (-counts[n], n))

"""Find the logical clients of a federation before training starts.

Every strategy first asks each node (``query.info``) which logical clients it serves and
how many training samples each holds. The ServerApp may start before every virtual or
real SuperNode has registered, so this waits for all the partitions the nodes announce.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flwr.serverapp import Grid

from mpsl_flwr.config import RunConfig
from mpsl_flwr.protocol import discovery as D
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


def discover_clients(grid: Grid, exchange: Exchange, cfg: RunConfig) -> dict[int, ClientInfo]:
    """Ask every node which logical clients it serves; wait for all of them.

    Waits until every partition that the nodes announce (``num-partitions`` times
    ``clients-per-node``) has reported or, when ``min-nodes`` is set, that many nodes
    have. Past ``node-wait-timeout`` it goes on with the clients it has (an error if none).
    """
    deadline = time.monotonic() + cfg.node_wait_timeout
    clients: dict[int, ClientInfo] = {}
    asked: set[int] = set()
    expected: int | None = None
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
            for node_id, reply in replies.items():
                if (err := reply_error(reply)) is not None:
                    errors.append(f"node {node_id}: {err}")
                    log.warning("Node %s failed query.info: %s", node_id, err)
                    continue
                info = D.read_info_reply(reply.content)
                expected = info.num_clients
                for cid, n in zip(info.clients, info.num_examples, strict=True):
                    clients[cid] = ClientInfo(cid, node_id, n)
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

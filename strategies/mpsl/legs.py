"""The server's half of every MPSL leg, and the drop policy they share.

A leg sends one message per node (:class:`~mpsl_flwr.protocol.transport.Exchange`) and
reads the replies with the codecs of :mod:`mpsl_flwr.protocol.mpsl`, whose other half the
ClientApp's handlers (:mod:`clients.mpsl`) use. The drop policy: a node that still holds
an unanswered message sits the leg out, a node that errors or does not answer within
``step-timeout`` is dropped from the step, and a client whose payload fails a check is
dropped from the step; each counts once in ``dropped-client-steps`` and is named in a
warning. The server model never sees what was dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import ArrayRecord, Message, RecordDict
from torch import Tensor

from mpsl_flwr.config import RunConfig
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.transport import Exchange, make_messages, reply_error
from mpsl_flwr.records import EpochStats
from strategies.discovery import message_ttl
from strategies.mpsl.plan import Activations
from strategies.mpsl.roster import Roster

log = logging.getLogger("mpsl_flwr")


class Legs:
    """Sends the legs of a step to the nodes of the roster and reads their replies."""

    def __init__(
        self,
        cfg: RunConfig,
        exchange: Exchange,
        roster: Roster,
        stream_lengths: Mapping[str, int],
        width: int,
    ) -> None:
        self.cfg = cfg
        self.exchange = exchange
        self.roster = roster
        self.stream_lengths = dict(stream_lengths)
        self.width = width
        self.limit = P.max_bytes(cfg.max_client_mb)
        self.wire_dtype = P.wire_dtype(cfg.activation_dtype)

    def send(
        self, contents: dict[int, RecordDict], message_type: str, group: str, stats: EpochStats
    ) -> dict[int, Message]:
        """Exchange one leg; drop (with a warning) nodes that are busy, error or time out."""
        busy = self.exchange.busy_nodes()
        for node_id in sorted(busy & set(contents)):
            log.warning(
                "Node %d still holds an unanswered message; it sits out %s of step %s.",
                node_id,
                message_type,
                group,
            )
            del contents[node_id]
            stats.dropped += 1
        replies, missing = self.exchange(
            make_messages(contents, message_type, group, message_ttl(self.cfg)),
            self.cfg.step_timeout,
        )
        for node_id in missing:
            log.warning(
                "Node %d did not answer %s of step %s within step-timeout (%.1fs); its "
                "clients are dropped from this step.",
                node_id,
                message_type,
                group,
                self.cfg.step_timeout,
            )
            stats.dropped += 1
        ok = {}
        for node_id, reply in replies.items():
            if (err := reply_error(reply)) is not None:
                log.warning(
                    "Node %d replied to %s of step %s with an error (%s); its clients are "
                    "dropped from this step.",
                    node_id,
                    message_type,
                    group,
                    err,
                )
                stats.dropped += 1
                continue
            ok[node_id] = reply
        return ok

    def _reject(self, node_id: int, rejected: list[P.Rejection], stats: EpochStats) -> None:
        for r in rejected:
            log.warning(
                "Client %d (node %d) sent bad %s; dropped from this step.",
                r.cid,
                node_id,
                r.problem,
            )
            stats.dropped += 1

    # ------------------------------------------------------------------ train.forward
    def forward(
        self,
        plans: dict[int, P.BatchPlan],
        group: str,
        stats: EpochStats,
        restore: dict[int, dict[str, object]],
    ) -> dict[int, Activations]:
        """Ask for the activations of ``plans``, with a head or a saved state where due.

        ``restore`` holds the checkpointed client states still to hand back (resume); the
        ones delivered are removed from it.
        """
        by_node = self.roster.by_node(plans)
        contents = {
            node_id: P.forward_request(
                {c: plans[c] for c in cids},
                self.roster.head_for(node_id),
                {c: P.restore_records(restore[c]) for c in cids if c in restore},
            )
            for node_id, cids in by_node.items()
        }
        replies = self.send(contents, P.FORWARD, group, stats)
        self.roster.heard_from(replies)
        for node_id in replies:
            for cid in by_node[node_id]:
                restore.pop(cid, None)
        return self._activations(replies, plans, stats)

    def _activations(
        self, replies: dict[int, Message], plans: dict[int, P.BatchPlan], stats: EpochStats
    ) -> dict[int, Activations]:
        acts: dict[int, Activations] = {}
        by_node = self.roster.by_node(plans)
        for node_id, reply in replies.items():
            mine = {c: plans[c] for c in by_node.get(node_id, [])}
            got, rejected = P.read_activations(
                reply.content, mine, self.stream_lengths, self.width, self.limit
            )
            self._reject(node_id, rejected, stats)
            acts.update(got)
        return acts

    # ------------------------------------------------------------------ train.loss
    def loss(
        self,
        plans: dict[int, P.BatchPlan],
        outputs: dict[int, Tensor],
        group: str,
        stats: EpochStats,
    ) -> dict[int, Tensor]:
        """Send each client its output slice; return the ``dL_n/dz_n`` that came back."""
        by_node = self.roster.by_node(plans)
        contents = {
            node_id: P.loss_request({c: plans[c] for c in cids}, outputs)
            for node_id, cids in by_node.items()
        }
        grads = {}
        for node_id, reply in self.send(contents, P.LOSS, group, stats).items():
            shapes = {c: tuple(outputs[c].shape) for c in by_node[node_id]}
            results, rejected = P.read_loss(reply.content, shapes, self.limit)
            self._reject(node_id, rejected, stats)
            for cid, r in results.items():
                grads[cid] = r.grad
                stats.loss_sum += r.loss * r.num_examples
                stats.correct += r.correct
                stats.samples += r.num_examples
        return grads

    # ------------------------------------------------------------------ train.backward
    def backward(
        self,
        plans: dict[int, P.BatchPlan],
        cut: dict[int, dict[str, Tensor]],
        lr: float,
        next_plans: dict[int, P.BatchPlan],
        group: str,
        stats: EpochStats,
    ) -> dict[int, tuple[P.BatchPlan, Activations]]:
        """Send the cut-layer gradients; return the next batches' activations (prefetch)."""
        contents = {
            node_id: P.backward_request(
                {c: plans[c] for c in cids},
                cut,
                lr,
                {c: next_plans[c] for c in cids if c in next_plans},
                self.wire_dtype,
            )
            for node_id, cids in self.roster.by_node(plans).items()
        }
        replies = self.send(contents, P.BACKWARD, group, stats)
        acts = self._activations(replies, next_plans, stats)
        return {cid: (next_plans[cid], a) for cid, a in acts.items()}

    # ------------------------------------------------------------------ queries
    def heads(self, cids: list[int], group: str) -> dict[int, ArrayRecord]:
        """``query.head``: the current head of each of ``cids`` that answers."""
        by_node = self.roster.by_node(cids)
        contents = {node_id: P.clients_request(c) for node_id, c in by_node.items()}
        heads: dict[int, ArrayRecord] = {}
        for node_id, reply in self.send(contents, P.QUERY_HEAD, group, EpochStats()).items():
            heads.update(P.read_heads(reply.content, by_node[node_id]))
        return heads

    def states(self, cids: list[int], group: str) -> dict[int, dict[str, object]]:
        """``query.state``: each client's head and optimiser state, as plain tensors."""
        by_node = self.roster.by_node(cids)
        contents = {node_id: P.clients_request(c) for node_id, c in by_node.items()}
        states: dict[int, dict[str, object]] = {}
        for node_id, reply in self.send(contents, P.QUERY_STATE, group, EpochStats()).items():
            states.update(P.read_states(reply.content, by_node[node_id]))
        return states

"""The server's half of every MPSL leg, and the drop policy they share.

A leg sends one message per node (:class:`~mpsl_flwr.protocol.transport.Exchange`) and
reads the replies with the codecs of :mod:`mpsl_flwr.protocol.mpsl`, whose other half the
ClientApp's handlers (:mod:`clients.mpsl`) use. The drop policy: a node that still holds
an unanswered message sits the leg out, a node that errors or does not answer within
``step-timeout`` is dropped from the step, and a client whose payload fails the gate
(:mod:`mpsl_flwr.protocol.gate`) is dropped from the step (a head, from the average);
each counts once in ``dropped-client-steps`` and is named in a warning with its node,
the leg and what was wrong. The server model never sees what was dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from flwr.app import ArrayRecord, Message, RecordDict
from torch import Tensor, nn

from mpsl_flwr.config import RunConfig
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.split_model import trainable_state
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.transport import Exchange, make_messages, reply_error
from mpsl_flwr.records import EpochStats
from strategies.discovery import message_ttl
from strategies.mpsl.plan import Activations
from strategies.mpsl.roster import Roster

log = logging.getLogger("mpsl_flwr")

# ``max-abs-activation = 0``: this many times the largest entry the head can output.
ACTIVATION_HEADROOM = 10.0


def activation_bound(cfg: RunConfig, head: ClientHead) -> float:
    """The largest ``|value|`` accepted in a client's activations (``max-abs-activation``).

    Every activation is an output of the head's pre-LayerNorm, ``y = gamma * x_hat + beta``
    with ``x_hat`` of mean 0 and variance 1 over the width d, so ``|x_hat_i| <= sqrt(d - 1)``
    and ``|y_i| <= max|gamma| * sqrt(d - 1) + max|beta|``. The default (0) is
    ``ACTIVATION_HEADROOM`` times that bound for the initial head, room for the affine
    parameters to grow while clients train; anything past it is an attack or a bug, and
    values like 1e30 would make the server model non-finite.
    """
    if cfg.max_abs_activation > 0:
        return cfg.max_abs_activation
    norm = head.pre_norm
    gamma = float(norm.weight.detach().abs().max()) if norm.weight is not None else 1.0
    beta = float(norm.bias.detach().abs().max()) if norm.bias is not None else 0.0
    return ACTIVATION_HEADROOM * (gamma * math.sqrt(max(head.width - 1, 1)) + beta)


def tail_gradient_bound(classifier: nn.Module) -> float:
    """The most one sample's loss gradient can reach at a client tail's input, in units
    of ``1 / b_n``: ``dL/de = W^T (p - onehot(y))`` has entries within ``2 max|W|``.

    ``W`` is the aggregated classifier; ``ACTIVATION_HEADROOM`` times it (and at least 1)
    leaves the clients' classifiers room to grow during an epoch.
    """
    weight = classifier.get_parameter("weight")
    return 2.0 * max(1.0, ACTIVATION_HEADROOM * float(weight.detach().abs().max()))


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
        self.max_abs = activation_bound(cfg, roster.head)
        self.wire_dtype = P.wire_dtype(cfg.activation_dtype)

    def send(
        self,
        contents: dict[int, RecordDict],
        message_type: str,
        group: str,
        stats: EpochStats,
        clients: Mapping[int, list[int]],
    ) -> dict[int, Message]:
        """Exchange one leg; drop (with a warning) nodes that are busy, error or time out.

        ``clients`` are the logical clients each node's message is for: a node that is
        dropped drops each of them from the step, and each counts in ``stats``.
        """

        def drop(node_id: int, why: str, *args: object) -> None:
            name = self.roster.node_name(node_id).capitalize()
            log.warning(f"%s {why}; its clients are dropped from this step.", name, *args)
            stats.dropped += len(clients.get(node_id, ())) or 1

        busy = self.exchange.busy_nodes()
        for node_id in sorted(busy & set(contents)):
            drop(
                node_id,
                "still holds an unanswered message, so sits out %s of step %s",
                message_type,
                group,
            )
            del contents[node_id]
        replies, missing = self.exchange(
            make_messages(contents, message_type, group, message_ttl(self.cfg)),
            self.cfg.step_timeout,
        )
        for node_id in missing:
            drop(
                node_id,
                "did not answer %s of step %s within step-timeout (%.1fs)",
                message_type,
                group,
                self.cfg.step_timeout,
            )
        ok = {}
        for node_id, reply in replies.items():
            if (err := reply_error(reply)) is not None:
                drop(
                    node_id, "replied to %s of step %s with an error (%s)", message_type, group, err
                )
                continue
            ok[node_id] = reply
        return ok

    def _reject(
        self,
        node_id: int,
        leg: str,
        rejected: list[P.Rejection],
        stats: EpochStats,
        consequence: str = "dropped from this step",
    ) -> None:
        """Name each refused client (client, node, leg, problem) and count it as dropped."""
        for r in rejected:
            log.warning(
                "Client %d (node %d) sent bad %s (in its %s reply); %s.",
                r.cid,
                node_id,
                r.problem,
                leg,
                consequence,
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
        replies = self.send(contents, P.FORWARD, group, stats, by_node)
        self.roster.heard_from(replies)
        for node_id in replies:
            for cid in by_node[node_id]:
                restore.pop(cid, None)
        return self._activations(replies, plans, P.FORWARD, stats)

    def _activations(
        self,
        replies: dict[int, Message],
        plans: dict[int, P.BatchPlan],
        leg: str,
        stats: EpochStats,
    ) -> dict[int, Activations]:
        acts: dict[int, Activations] = {}
        by_node = self.roster.by_node(plans)
        for node_id, reply in replies.items():
            mine = {c: plans[c] for c in by_node.get(node_id, [])}
            got, rejected = P.read_activations(
                reply.content, mine, self.stream_lengths, self.width, self.limit, self.max_abs
            )
            self._reject(node_id, leg, rejected, stats)
            acts.update(got)
        return acts

    # ------------------------------------------------------------------ train.loss
    def loss(
        self,
        plans: dict[int, P.BatchPlan],
        outputs: dict[int, Tensor],
        lr: float,
        group: str,
        stats: EpochStats,
    ) -> dict[int, Tensor]:
        """Send each client its output slice; return the ``dL_n/dz_n`` that came back.

        With a client tail the slice is pooled embeddings and ``lr`` goes along for the
        classifier's step.
        """
        tail = self.roster.head.classifier
        by_node = self.roster.by_node(plans)
        contents = {
            node_id: P.loss_request(
                {c: plans[c] for c in cids}, outputs, None if tail is None else lr
            )
            for node_id, cids in by_node.items()
        }
        per_sample = 1.0 if tail is None else tail_gradient_bound(tail)
        grads = {}
        for node_id, reply in self.send(contents, P.LOSS, group, stats, by_node).items():
            shapes = {c: tuple(outputs[c].shape) for c in by_node[node_id]}
            results, rejected = P.read_loss(reply.content, shapes, self.limit, per_sample)
            self._reject(node_id, P.LOSS, rejected, stats)
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
        by_node = self.roster.by_node(plans)
        contents = {
            node_id: P.backward_request(
                {c: plans[c] for c in cids},
                cut,
                lr,
                {c: next_plans[c] for c in cids if c in next_plans},
                self.wire_dtype,
            )
            for node_id, cids in by_node.items()
        }
        replies = self.send(contents, P.BACKWARD, group, stats, by_node)
        acts = self._activations(replies, next_plans, P.BACKWARD, stats)
        return {cid: (next_plans[cid], a) for cid, a in acts.items()}

    # ------------------------------------------------------------------ queries
    def heads(self, cids: list[int], group: str, stats: EpochStats) -> dict[int, ArrayRecord]:
        """``query.head``: the current head of each of ``cids`` that answers and passes the
        gate (checked against the aggregated head; a refused one counts in ``stats``)."""
        by_node = self.roster.by_node(cids)
        contents = {node_id: P.clients_request(c) for node_id, c in by_node.items()}
        expected = trainable_state(self.roster.head)
        heads: dict[int, ArrayRecord] = {}
        # A node that does not answer misses one average, not a step: not counted.
        for node_id, reply in self.send(
            contents, P.QUERY_HEAD, group, EpochStats(), by_node
        ).items():
            got, rejected = P.read_heads(reply.content, by_node[node_id], expected, self.limit)
            self._reject(node_id, P.QUERY_HEAD, rejected, stats, "left out of the head average")
            heads.update(got)
        return heads

    def states(self, cids: list[int], group: str) -> dict[int, dict[str, object]]:
        """``query.state``: each client's head and optimiser state, as plain tensors, each
        checked against the aggregated head (a refused one is left out, with a warning)."""
        by_node = self.roster.by_node(cids)
        contents = {node_id: P.clients_request(c) for node_id, c in by_node.items()}
        head = trainable_state(self.roster.head)
        head_shapes = {name: tuple(t.shape) for name, t in head.items()}
        param_shapes = [tuple(t.shape) for t in head.values()]
        states: dict[int, dict[str, object]] = {}
        for node_id, reply in self.send(
            contents, P.QUERY_STATE, group, EpochStats(), by_node
        ).items():
            got, rejected = P.read_states(
                reply.content, by_node[node_id], head_shapes, param_shapes, self.limit
            )
            self._reject(
                node_id, P.QUERY_STATE, rejected, EpochStats(), "left out of the checkpoint"
            )
            states.update(got)
        return states

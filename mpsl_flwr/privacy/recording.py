"""Recording exactly what an MPSL server receives, for the label attacks to run on.

:class:`RecordingGrid` wraps the :class:`flwr.serverapp.Grid` a strategy talks to (like
:class:`~mpsl_flwr.protocol.transport.MeteredGrid`) and keeps a copy of every reply the
server pulls in the chosen epochs and first ``steps`` steps (its message type, group
id, source node and content), plus the messages the server itself pushed in those steps,
which say which batch plan a reply answers and carry the cut-layer gradients the server
computed. It adds no message, changes none and reads no client data: a run with and
without it is the same run (``tests/test_label_attacks.py`` checks the final weights bit
for bit).

:func:`loss_exchanges`, :func:`loss_gradients` and :func:`cut_gradients` turn a recording
into per-client :class:`Observation` s (plan + arrays): the material of
:mod:`mpsl_flwr.privacy.attacks`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.gate import PayloadError, packed_index
from mpsl_flwr.protocol.transport import GridWrapper


@dataclass(frozen=True)
class RecordedMessage:
    """One message of an attacked step, as the server saw it.

    ``node_id`` is the source of a received reply and the destination of a sent message;
    ``message_id`` is the sent message's id, or for a reply the id it answers, so the two
    pair up. ``content`` is a deep copy, untouched by whatever the server does next.
    """

    direction: Literal["sent", "received"]
    message_type: str
    group_id: str
    epoch: int
    step: int
    node_id: int
    message_id: str
    content: RecordDict


class RecordingGrid(GridWrapper):
    """A :class:`Grid` that passes everything through and records the attacked steps.

    Parameters
    ----------
    grid : Grid
        The grid to wrap (``LocalGrid``, Flower's in-memory or HTTP grid).
    epochs : epochs to record, from 0 as in the group ids (None: all).
    steps : record steps ``0 .. steps - 1`` of each recorded epoch.
    message_types : the legs to record (default: every leg of a step).
    """

    def __init__(
        self,
        grid: Grid,
        epochs: Collection[int] | None = None,
        steps: int = 1,
        message_types: Collection[str] | None = None,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (steps recorded per epoch), got {steps}.")
        super().__init__(grid)
        self.epochs = None if epochs is None else frozenset(epochs)
        self.steps = steps
        self.message_types = None if message_types is None else frozenset(message_types)
        self.sent: list[RecordedMessage] = []
        self.received: list[RecordedMessage] = []

    # ------------------------------------------------------------------ selection
    def _wanted(self, message: Message) -> tuple[int, int] | None:
        meta = message.metadata
        if self.message_types is not None and meta.message_type not in self.message_types:
            return None
        at = P.step_of(meta.group_id)
        if at is None or at[1] >= self.steps:
            return None
        if self.epochs is not None and at[0] not in self.epochs:
            return None
        return at

    def _keep(
        self, log: list[RecordedMessage], message: Message, direction: str, node: int, mid: str
    ) -> None:
        at = self._wanted(message)
        if at is None or not message.has_content():
            return
        log.append(
            RecordedMessage(
                direction,  # type: ignore[arg-type]
                message.metadata.message_type,
                message.metadata.group_id,
                at[0],
                at[1],
                node,
                mid,
                copy.deepcopy(message.content),
            )
        )

    # ------------------------------------------------------------------ Grid
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for msg, mid in zip(messages, ids, strict=True):
            self._keep(self.sent, msg, "sent", msg.metadata.dst_node_id, mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            meta = reply.metadata
            self._keep(self.received, reply, "received", meta.src_node_id, meta.reply_to_message_id)
        return replies


# ------------------------------------------------------------------ observations
@dataclass(frozen=True)
class Observation:
    """What the server holds about one client's batch in one leg of one step."""

    epoch: int
    step: int
    cid: int
    node_id: int
    plan: P.BatchPlan
    arrays: dict[str, np.ndarray]  # float32, one row per sample

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])


def _per_client(record: object, rows: dict[int, int]) -> dict[int, dict[str, np.ndarray]]:
    """A packed record's float32 arrays per client (none if it is not an ArrayRecord)."""
    if not isinstance(record, ArrayRecord) or not rows:
        return {}
    return {
        cid: {name: t.numpy() for name, t in tensors.items()}
        for cid, tensors in P.unpacked(record, rows).items()
    }


def _reply_rows(content: RecordDict, plans: dict[int, P.BatchPlan]) -> dict[int, int]:
    """The rows of each client of a packed reply, as its index states them (checked
    against the plan; none if the index is not what an honest client sends)."""
    stats = content.get(P.STATS)
    try:
        return packed_index(stats, P.rows_of(plans)) if isinstance(stats, MetricRecord) else {}
    except PayloadError:
        return {}


def _plans(content: RecordDict) -> dict[int, P.BatchPlan]:
    config = content.get(P.CONFIG)
    return P.read_plans(config) if isinstance(config, ConfigRecord) else {}


def loss_exchanges(grid: RecordingGrid) -> list[tuple[Observation, Observation]]:
    """Every recorded ``train.loss`` exchange of one client: what the server sent (its
    rows of ``out``: logits, or a client tail's pooled embeddings) and its rows of the
    ``grad`` (``dL_n/dz_n``) that came back, each with the batch plan of the request."""
    requests = {m.message_id: m for m in grid.sent if m.message_type == P.LOSS}
    found = []
    for reply in grid.received:
        request = requests.get(reply.message_id)
        if reply.message_type != P.LOSS or request is None:
            continue
        plans = _plans(request.content)
        outs = _per_client(request.content.get(P.OUT), P.rows_of(plans))
        grads = _per_client(reply.content.get(P.GRAD), _reply_rows(reply.content, plans))
        for cid in sorted(grads.keys() & outs.keys()):
            at = (reply.epoch, reply.step, cid, reply.node_id, plans[cid])
            found.append((Observation(*at, outs[cid]), Observation(*at, grads[cid])))
    return found


def loss_gradients(grid: RecordingGrid) -> list[Observation]:
    """Each client's ``dL_n/dz_n`` of every recorded ``train.loss`` reply, with its plan."""
    return [grad for _, grad in loss_exchanges(grid)]


def cut_gradients(grid: RecordingGrid) -> list[Observation]:
    """Each client's rows of the ``cut`` of every recorded ``train.backward`` request: the
    cut-layer gradients the server computed from the loss-leg replies (one array per
    stream)."""
    found = []
    for msg in grid.sent:
        if msg.message_type != P.BACKWARD:
            continue
        plans = _plans(msg.content)
        for cid, arrays in sorted(_per_client(msg.content.get(P.CUT), P.rows_of(plans)).items()):
            found.append(Observation(msg.epoch, msg.step, cid, msg.node_id, plans[cid], arrays))
    return found


def stacked(observations: Iterable[Observation]) -> np.ndarray:
    """The observations' arrays as one matrix, one flattened row per sample (streams
    concatenated in name order)."""
    blocks = [
        np.concatenate([o.arrays[k].reshape(o.num_samples, -1) for k in sorted(o.arrays)], axis=1)
        for o in observations
    ]
    if not blocks:
        raise ValueError("no observation to stack: nothing was recorded for these steps.")
    return np.concatenate(blocks, axis=0)

"""How messages travel: one exchange per leg, a timeout, and a meter of the bytes.

Every strategy sends its legs through :class:`Exchange` over a :class:`MeteredGrid`:
one message per node, at most one message in flight per node, replies matched by
message id (never by arrival order), and every payload byte counted per node and per
record kind.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

log = logging.getLogger("mpsl_flwr")


@dataclass
class TrafficMeter:
    """Bytes sent to and received from each node, measured on the actual messages."""

    sent: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # Bytes by record kind ("act", "head", "config", ...: the record name up to its
    # first dot) and direction, plus how many records of that kind went that way.
    by_record: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )

    def count(self, message: Message, direction: str) -> int:
        """Add one message's records to the per-kind tally; return its payload bytes."""
        if not message.has_content():
            return 0
        total = 0
        for name, record in message.content.items():
            size = record.count_bytes()
            tally = self.by_record[(direction, name.split(".", 1)[0])]
            tally[0] += size
            tally[1] += 1
            total += size
        return total

    def totals(self) -> tuple[int, int]:
        """Bytes sent and received so far, over all nodes."""
        return sum(self.sent.values()), sum(self.received.values())

    def mb_per_client(self, since: tuple[int, int], num_clients: int) -> dict[str, float]:
        """MB per client since the ``totals()`` taken earlier: down = server to client."""
        sent, received = self.totals()
        n = max(1, num_clients)
        return {
            "mb-down-per-client": (sent - since[0]) / n / 1e6,
            "mb-up-per-client": (received - since[1]) / n / 1e6,
        }


class Exchange:
    """Send one message per node and collect the replies, within a timeout.

    Replies are matched by message id. A node whose reply has not arrived by the
    deadline is reported as missing; its message stays *in flight* and the node is
    skipped by later exchanges until that stale reply (or its expiry) has been pulled,
    so no node ever holds two of our messages.
    """

    def __init__(self, grid: Grid, poll_interval: float = 0.01) -> None:
        self.grid = grid
        self.poll_interval = poll_interval
        self._stale: dict[str, int] = {}  # message id -> node id
        self.tap: list = []  # callables(reply) that see every reply (tests, audits)

    def busy_nodes(self) -> set[int]:
        """Nodes that still hold a message from an earlier, timed-out exchange."""
        if self._stale:
            for reply in self.grid.pull_messages(list(self._stale)):
                self._stale.pop(reply.metadata.reply_to_message_id, None)
        return set(self._stale.values())

    def __call__(
        self, messages: Mapping[int, Message], timeout: float
    ) -> tuple[dict[int, Message], list[int]]:
        """Replies by node id, and the node ids that did not answer in time."""
        if not messages:
            return {}, []
        ids = list(self.grid.push_messages(list(messages.values())))
        pending = dict(zip(ids, messages, strict=True))
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node_id = pending.pop(reply.metadata.reply_to_message_id, None)
                if node_id is None:
                    continue
                for tap in self.tap:
                    tap(reply)
                replies[node_id] = reply
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        self._stale.update(pending)
        return replies, list(pending.values())


class GridWrapper(Grid):
    """A :class:`Grid` that passes everything to ``inner``; subclasses watch
    :meth:`push_messages` and :meth:`pull_messages`.

    Its ``send_and_receive`` goes through this grid's own push and pull, so nothing
    bypasses a subclass, and polls every ``poll_interval`` seconds, so wrapping Flower's
    HTTP grid (which sleeps 3 s between polls) also cuts a deployment's round trip.
    """

    def __init__(self, grid: Grid, poll_interval: float = 0.01) -> None:
        self.inner = grid
        self.poll_interval = poll_interval

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        return replies


class MeteredGrid(GridWrapper):
    """A :class:`GridWrapper` that counts the payload bytes of every message it pushes
    and pulls."""

    def __init__(self, grid: Grid, poll_interval: float = 0.01) -> None:
        super().__init__(grid, poll_interval)
        self.meter = TrafficMeter()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            self.meter.sent[msg.metadata.dst_node_id] += self.meter.count(msg, "down")
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            self.meter.received[reply.metadata.src_node_id] += self.meter.count(reply, "up")
        return replies


def make_messages(
    contents: Mapping[int, RecordDict], message_type: str, group_id: str, ttl: float
) -> dict[int, Message]:
    """One message per node."""
    return {
        node: Message(content, node, message_type, group_id=group_id, ttl=ttl)
        for node, content in contents.items()
    }


def reply_error(reply: Message) -> str | None:
    """The error a reply carries, as text, or None for a normal reply."""
    if reply.has_error():
        return f"code {reply.error.code}: {reply.error.reason}"
    return None


def nodes_of(clients: Iterable[int], node_of: Mapping[int, int]) -> dict[int, list[int]]:
    """Group logical client ids by the node that serves them."""
    grouped: dict[int, list[int]] = defaultdict(list)
    for cid in sorted(clients):
        grouped[node_of[cid]].append(cid)
    return dict(grouped)

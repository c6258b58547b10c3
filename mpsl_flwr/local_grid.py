"""An in-process :class:`flwr.serverapp.Grid` for tests and debugging.

It hands real Flower :class:`Message` objects to a real :class:`ClientApp` in the same
process, keeps one :class:`Context` per node (so ``context.state`` persists exactly as
on a SuperNode), and, like Flower's runtime, turns an exception in a handler into an
error reply without touching that node's state. Replies come back in shuffled order.
A ``fault`` hook may drop or rewrite any message, to test timeouts and bad input.
Use ``flwr run`` for the real thing; this one skips Ray and the SuperLink.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Fault = Callable[[int, Message], Message | str | None]
"""``fault(node_id, message)``: return the message (maybe changed) to deliver it, None
to drop it (the server then times out), or ``"raise"`` to make the node raise."""


class LocalGrid(Grid):
    """``num_nodes`` virtual SuperNodes running ``client_app`` in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        node_configs: list[dict] | None = None,
        seed: int = 0,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id=1)
        # What a ServerApp process gets from Flower's runtime; Message() reads it.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config=(
                    node_configs[i]
                    if node_configs
                    else {"partition-id": i, "num-partitions": num_nodes}
                ),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node_id in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}
        self._rng = random.Random(seed)
        self.fault: Fault | None = None
        # reply_fault(node_id, reply) -> reply: tamper with what a node sends back.
        self.reply_fault: Callable[[int, Message], Message] | None = None
        self.delivered: list[Message] = []  # every message a node received
        self.pulled: list[Message] = []  # every reply the server pulled
        self._dead: set[int] = set()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def kill(self, node_id: int) -> None:
        """The node dies: it leaves the node list and never answers again."""
        self.node_ids.remove(node_id)
        self._dead.add(node_id)

    def restart(self, node_id: int) -> int:
        """A dead node comes back, as a SuperNode does: new node id, empty state."""
        old = self.contexts[node_id]
        new_id = max(self.contexts) + 1
        self.contexts[new_id] = Context(
            run_id=old.run_id,
            node_id=new_id,
            node_config=dict(old.node_config),
            state=RecordDict(),
            run_config=dict(old.run_config),
        )
        self.node_ids.append(new_id)
        return new_id

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            ids.append(msg_id)
            node_id = msg.metadata.dst_node_id
            if node_id not in self.contexts:
                raise ValueError(f"no node {node_id}")
            delivered: Message | str | None = msg
            if self.fault is not None:
                delivered = self.fault(node_id, msg)
            if delivered is None:
                continue
            reply = self._handle(
                node_id,
                msg,
                raise_error=delivered == "raise",
                delivered=delivered if isinstance(delivered, Message) else msg,
            )
            if self.reply_fault is not None:
                reply = self.reply_fault(node_id, reply)
            self._replies[msg_id] = reply
        return ids

    def _handle(self, node_id: int, msg: Message, raise_error: bool, delivered: Message) -> Message:
        context = self.contexts[node_id]
        trial = copy.deepcopy(context)  # a failing handler must not touch the node's state
        try:
            if raise_error:
                raise RuntimeError(f"injected failure on node {node_id}")
            self.delivered.append(delivered)
            reply = self.client_app(delivered, trial)
            self.contexts[node_id] = trial
        except Exception as ex:
            reason = f"{type(ex)}:<'{ex}'>"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ready = [mid for mid in message_ids if mid in self._replies]
        self._rng.shuffle(ready)
        replies = [self._replies.pop(mid) for mid in ready]
        self.pulled.extend(replies)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))

"""ClientApp handlers of the MPSL protocol (see :mod:`mpsl_flwr.protocol`).

Each handler restores the logical clients named in the message from
``context.state``, does its part of the step and replies. Only the backward leg and a
head sync change a client's state, so only they write it back. Labels are read here
and never put into a reply.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.runtime import NodeRuntime, head_state_key
from mpsl_flwr import protocol as P
from mpsl_flwr.models.split_model import load_trainable_state
from mpsl_flwr.state import from_array_record, save_module, to_array_record


def query_info(msg: Message, context: Context) -> Message:
    """Which logical clients this node serves, and how many samples each holds."""
    rt = NodeRuntime.from_context(context)
    sizes = [len(rt.partition(cid)) for cid in rt.client_ids]
    info = ConfigRecord(
        {"clients": rt.client_ids, "num-examples": sizes, "num-clients": rt.num_clients}
    )
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


def forward(msg: Message, context: Context) -> Message:
    """Draw the planned batches and return their cut-layer activations.

    A resumed run first restores the client's head and optimiser from the message, then a
    head sync (if any) overwrites the head, as after every epoch.
    """
    rt = NodeRuntime.from_context(context)
    head_sync = msg.content.get(P.HEAD)
    reply = RecordDict()
    for cid, plan in P.read_plans(msg.content[P.CONFIG]).items():
        rt.check_client(cid)
        for part, key in zip(P.CLIENT_STATE_PARTS, rt.state_keys(cid), strict=True):
            restore = P.client_state_key(cid, part, prefix="restore")
            if restore in msg.content:
                context.state[key] = msg.content[restore]
        client = rt.split_client(cid, context.state)
        if head_sync is not None:
            load_trainable_state(client.head, from_array_record(head_sync))
            save_module(context.state, head_state_key(cid), client.head)
        _put_activations(reply, rt, cid, client, plan)
    return Message(reply, reply_to=msg)


def loss(msg: Message, context: Context) -> Message:
    """Loss on the client's own labels; reply with ``dL_n/dz_n``, loss and correct count."""
    rt = NodeRuntime.from_context(context)
    reply = RecordDict()
    for cid, plan in P.read_plans(msg.content[P.CONFIG]).items():
        client = rt.split_client(cid, context.state)
        output = from_array_record(msg.content[P.out_key(cid)])["out"]
        grad, value, correct, n = client.loss_grad(plan, output)
        reply[P.grad_key(cid)] = to_array_record({"out": grad})
        reply[P.stats_key(cid)] = MetricRecord(
            {"loss": value, "correct": correct, "num-examples": n}
        )
    return Message(reply, reply_to=msg)


def backward(msg: Message, context: Context) -> Message:
    """Apply the cut-layer gradient, save the head, and draw the next batch if asked."""
    rt = NodeRuntime.from_context(context)
    config = msg.content[P.CONFIG]
    lr = float(config["lr"])  # type: ignore[arg-type]
    next_plans = P.read_plans(config, prefix="next-")
    reply = RecordDict()
    for cid, plan in P.read_plans(config).items():
        client = rt.split_client(cid, context.state)
        cut = from_array_record(msg.content[P.cut_key(cid)], dtype=torch.float32)
        client.apply_cut_grad(plan, cut, lr)
        rt.save(cid, context.state, client)
        if cid in next_plans:
            _put_activations(reply, rt, cid, client, next_plans[cid])
    return Message(reply, reply_to=msg)


def query_head(msg: Message, context: Context) -> Message:
    """The current head of each client asked for (end of epoch)."""
    rt = NodeRuntime.from_context(context)
    reply = RecordDict()
    for cid in msg.content[P.CONFIG]["clients"]:  # type: ignore[union-attr]
        key = head_state_key(int(cid))
        rt.check_client(int(cid))
        if key in context.state:
            reply[P.head_key(int(cid))] = ArrayRecord(dict(context.state[key].items()))
    return Message(reply, reply_to=msg)


def query_state(msg: Message, context: Context) -> Message:
    """Each asked-for client's head and optimiser state, as stored (for a checkpoint)."""
    rt = NodeRuntime.from_context(context)
    reply = RecordDict()
    for cid in msg.content[P.CONFIG]["clients"]:  # type: ignore[union-attr]
        rt.check_client(int(cid))
        for part, key in zip(P.CLIENT_STATE_PARTS, rt.state_keys(int(cid)), strict=True):
            if key in context.state:
                reply[P.client_state_key(int(cid), part)] = context.state[key]
    return Message(reply, reply_to=msg)


def _put_activations(reply: RecordDict, rt: NodeRuntime, cid: int, client, plan) -> None:
    if plan.size <= 0:
        return
    acts = client.activations(plan)
    if not acts or next(iter(acts.values())).shape[0] == 0:
        return
    reply[P.act_key(cid)] = to_array_record(acts, rt.wire_dtype)
    reply[P.stats_key(cid)] = MetricRecord({"num-examples": next(iter(acts.values())).shape[0]})

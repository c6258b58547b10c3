"""ClientApp handlers of the MPSL legs (records in :mod:`mpsl_flwr.protocol.mpsl`).

Each handler restores the logical clients named in the message from
``context.state``, does its part of the step and replies. Only the backward leg and a
head sync change a client's state, so only they write it back. Labels are read here
and never put into a reply.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, RecordDict
from torch import Tensor

from clients.runtime import NodeRuntime, head_state_key
from mpsl_flwr.models.split_model import load_trainable_state
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.compute_time import timed
from mpsl_flwr.split_client import SplitClient
from mpsl_flwr.state import from_array_record, save_module


def forward(msg: Message, context: Context) -> Message:
    """Draw the planned batches and return their cut-layer activations.

    A resumed run first restores the client's head and optimiser from the message, then a
    head sync (if any) overwrites the head, as after every epoch.
    """
    rt = NodeRuntime.from_context(context)
    request = P.read_forward_request(msg.content)
    acts: dict[int, dict[str, Tensor]] = {}
    for cid, plan in request.plans.items():
        rt.check_client(cid)
        for part, key in zip(P.CLIENT_STATE_PARTS, rt.state_keys(cid), strict=True):
            if part in request.restore[cid]:
                context.state[key] = request.restore[cid][part]
        client = rt.split_client(cid, context.state)
        if request.head is not None:
            load_trainable_state(client.head, from_array_record(request.head))
            save_module(context.state, head_state_key(cid), client.head)
        _draw(acts, cid, client, plan)
    return _reply_activations(msg, rt, acts)


def loss(msg: Message, context: Context) -> Message:
    """Loss on the client's own labels; reply with ``dL_n/dz_n``, loss and correct count.

    With a client tail the classifier trained on this loss, so the client is saved.
    """
    rt = NodeRuntime.from_context(context)
    request = P.read_loss_request(msg.content)
    results = {}
    for cid, (plan, output) in request.outputs.items():
        rt.check_client(cid)
        client = rt.split_client(cid, context.state)
        results[cid] = P.LossResult(*client.loss_grad(plan, output, request.lr))
        if client.head.classifier is not None:
            rt.save(cid, context.state, client)
    reply = RecordDict()
    P.put_loss(reply, results)
    return Message(reply, reply_to=msg)


def backward(msg: Message, context: Context) -> Message:
    """Apply the cut-layer gradient, save the head, and draw the next batch if asked."""
    rt = NodeRuntime.from_context(context)
    request = P.read_backward_request(msg.content)
    acts: dict[int, dict[str, Tensor]] = {}
    for cid, plan in request.plans.items():
        client = rt.split_client(cid, context.state)
        client.apply_cut_grad(plan, request.cut[cid], request.lr)
        rt.save(cid, context.state, client)
        if cid in request.next_plans:
            _draw(acts, cid, client, request.next_plans[cid])
    return _reply_activations(msg, rt, acts)


def query_head(msg: Message, context: Context) -> Message:
    """The current head of each client asked for (end of epoch)."""
    rt = NodeRuntime.from_context(context)
    reply = RecordDict()
    for cid in P.read_clients_request(msg.content):
        key = head_state_key(cid)
        rt.check_client(cid)
        if key in context.state:
            P.put_head(reply, cid, ArrayRecord(dict(context.state[key].items())))
    return Message(reply, reply_to=msg)


def query_state(msg: Message, context: Context) -> Message:
    """Each asked-for client's head and optimiser state, as stored (for a checkpoint)."""
    rt = NodeRuntime.from_context(context)
    reply = RecordDict()
    for cid in P.read_clients_request(msg.content):
        rt.check_client(cid)
        parts = {
            part: context.state[key]
            for part, key in zip(P.CLIENT_STATE_PARTS, rt.state_keys(cid), strict=True)
            if key in context.state
        }
        P.put_state(reply, cid, parts)  # type: ignore[arg-type]
    return Message(reply, reply_to=msg)


def _draw(
    acts: dict[int, dict[str, Tensor]], cid: int, client: SplitClient, plan: P.BatchPlan
) -> None:
    """Add client ``cid``'s activations for ``plan`` to ``acts``, unless it has no data."""
    if plan.size <= 0:
        return
    drawn = client.activations(plan)
    if drawn and next(iter(drawn.values())).shape[0] > 0:
        acts[cid] = drawn


def _reply_activations(
    msg: Message, rt: NodeRuntime, acts: dict[int, dict[str, Tensor]]
) -> Message:
    """The reply carrying the activations of the node's clients, packed in the wire dtype."""
    reply = RecordDict()
    P.put_activations(reply, acts, P.wire_dtype(rt.cfg.activation_dtype))
    return Message(reply, reply_to=msg)


# The training legs report their compute time (the server's per-step timings).
HANDLERS = {
    P.FORWARD: timed(forward),
    P.LOSS: timed(loss),
    P.BACKWARD: timed(backward),
    P.QUERY_HEAD: query_head,
    P.QUERY_STATE: query_state,
}

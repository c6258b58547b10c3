"""ClientApp handler of ``query.info`` (every federated strategy starts with it)."""

from __future__ import annotations

from flwr.app import Context, Message

from clients.runtime import NodeRuntime
from mpsl_flwr.protocol import discovery as D


def query_info(msg: Message, context: Context) -> Message:
    """Which logical clients this node serves, and how many samples each holds."""
    rt = NodeRuntime.from_context(context)
    sizes = [len(rt.partition(cid)) for cid in rt.client_ids]
    return Message(D.info_reply(D.NodeInfo(rt.client_ids, sizes, rt.num_clients)), reply_to=msg)


HANDLERS = {D.QUERY_INFO: query_info}

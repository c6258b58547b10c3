"""How long a node's handler computed, carried in its reply, for the per-step timings.

A ClientApp handler wrapped in :func:`timed` adds one small record to its reply: the
seconds from receiving the message's content to building the reply (restoring state,
drawing the batch, the head's forward or backward, saving state). The server only
reports the figure (``steps.jsonl``); nothing it decides depends on it, and a value
that is missing, not a number, negative or absurd reads as None.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

from flwr.app import Context, Message, MetricRecord, RecordDict

RECORD = "compute"
KEY = "seconds"
MAX_SECONDS = 86_400.0
"""More than a day of compute for one message is not a measurement."""

Handler = Callable[[Message, Context], Message]


def timed(handler: Handler) -> Handler:
    """``handler`` with its compute time added to the reply it returns."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        reply = handler(msg, context)
        if not reply.has_error():
            put_compute_time(reply.content, time.perf_counter() - started)
        return reply

    return wrapper


def put_compute_time(content: RecordDict, seconds: float) -> None:
    """Client: add the handler's compute time to a reply."""
    content[RECORD] = MetricRecord({KEY: float(seconds)})


def read_compute_time(content: RecordDict) -> float | None:
    """Server: a reply's compute time in seconds, or None where it has none that is plausible."""
    record = content.get(RECORD) if RECORD in content else None
    if not isinstance(record, MetricRecord):
        return None
    value = record.get(KEY)
    if not isinstance(value, float) or not math.isfinite(value):
        return None
    return value if 0.0 <= value <= MAX_SECONDS else None

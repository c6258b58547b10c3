"""The MPSL legs as Flower records: both halves of every leg, side by side.

One step (Fudala et al., arXiv 2502.06355), as messages:

``train.forward``  server -> node: which batch each logical client draws (and, when
                   due, the aggregated head or a checkpointed state to restore). Reply:
                   the cut-layer activations ``act.<cid>`` and ``stats.<cid>``.
``train.loss``     server -> node: each client's logit slice ``out.<cid>``. Reply:
                   ``grad.<cid>`` (dL_n/dz_n) and ``stats.<cid>`` (loss, correct).
                   Labels never leave the client. Retrieval has no labels and skips it.
``train.backward`` server -> node: cut-layer gradients ``cut.<cid>``, the learning rate,
                   and optionally the next batch to draw; the reply then carries the
                   next activations, so a steady-state step costs two round trips.
``query.head``     each client's head (end of epoch), for the FedAvg of the heads.
``query.state``    each client's head and optimiser state (for a checkpoint); a resumed
                   run sends them back with the client's first ``train.forward``.

For each leg this module holds, in this order: what the server sends
(``*_request``), how the client reads it (``read_*_request``), what the client replies
(``put_*``), and how the server reads the reply (``read_*``). Everything a client sends
is checked on the way in (:func:`checked_arrays`: names, dtype, shape from the plan,
size, finiteness), so a bad payload is refused before it is decoded into the server's
tensors; a refusal is a :class:`Rejection` that the server's leg logs and counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from mpsl_flwr.state import from_array_record, to_array_record

FORWARD = "train.forward"
LOSS = "train.loss"
BACKWARD = "train.backward"
QUERY_HEAD = "query.head"
QUERY_STATE = "query.state"

CONFIG = "config"
HEAD = "head"
WIRE_DTYPES = ("float32", "float16")
CLIENT_STATE_PARTS = ("head", "optim", "optim.cfg")


def act_key(cid: int) -> str:
    """Activations of client ``cid`` (one array per stream)."""
    return f"act.{cid}"


def out_key(cid: int) -> str:
    """Server output (logit slice) for client ``cid``."""
    return f"out.{cid}"


def grad_key(cid: int) -> str:
    """Gradient of client ``cid``'s loss w.r.t. its output slice."""
    return f"grad.{cid}"


def cut_key(cid: int) -> str:
    """Cut-layer gradient for client ``cid`` (one array per stream)."""
    return f"cut.{cid}"


def stats_key(cid: int) -> str:
    """Per-client metrics of a reply (num-examples, loss, correct)."""
    return f"stats.{cid}"


def head_key(cid: int) -> str:
    """Head weights of client ``cid`` (end of epoch)."""
    return f"head.{cid}"


def client_state_key(cid: int, part: str, prefix: str = "state") -> str:
    """A part (``head``, ``optim``, ``optim.cfg``) of a client's saved state in a message."""
    return f"{prefix}.{cid}.{part}"


def wire_dtype(activation_dtype: str) -> torch.dtype | None:
    """The dtype cut-layer tensors travel in (None: as computed, float32)."""
    return torch.float16 if activation_dtype == "float16" else None


@dataclass(frozen=True)
class BatchPlan:
    """Which slice of its epoch permutation a client draws: ``[offset, offset + size)``."""

    epoch: int
    offset: int
    size: int


@dataclass(frozen=True)
class Rejection:
    """A client's payload that failed a check: who sent it and what was wrong."""

    cid: int
    problem: str


# ------------------------------------------------------------------ plans and the gate
def plan_record(plans: Mapping[int, BatchPlan], prefix: str = "") -> dict[str, list[int]]:
    """Batch plans of several clients as ConfigRecord entries (none for no plans: Flower's
    ``ConfigRecord.count_bytes`` cannot size an empty list)."""
    if not plans:
        return {}
    cids = sorted(plans)
    return {
        f"{prefix}clients": cids,
        f"{prefix}epochs": [plans[c].epoch for c in cids],
        f"{prefix}offsets": [plans[c].offset for c in cids],
        f"{prefix}sizes": [plans[c].size for c in cids],
    }


def read_plans(config: ConfigRecord, prefix: str = "") -> dict[int, BatchPlan]:
    """Inverse of :func:`plan_record`."""
    if f"{prefix}clients" not in config:
        return {}
    cols = [config[f"{prefix}{k}"] for k in ("clients", "epochs", "offsets", "sizes")]
    return {
        int(c): BatchPlan(int(e), int(o), int(s))
        for c, e, o, s in zip(*cols, strict=True)  # type: ignore[call-overload]
    }


def max_bytes(megabytes: float) -> int:
    """``max-client-mb`` in bytes."""
    return int(np.floor(megabytes * 1e6))


def checked_arrays(
    record: ArrayRecord, expected_shapes: Mapping[str, tuple[int, ...]], limit: int
) -> tuple[dict[str, Tensor] | None, str | None]:
    """Decode ``record`` to float32 tensors if it is well-formed; else ``(None, reason)``.

    Size, names, dtypes and shapes are read from the serialized record first, so an
    oversized or mistyped payload is refused before it is decoded.
    """
    size = record.count_bytes()
    if size > limit:
        return None, f"{size / 1e6:.1f} MB exceeds max-client-mb ({limit / 1e6:.1f} MB)"
    if set(record) != set(expected_shapes):
        return None, f"arrays {sorted(record)}, expected {sorted(expected_shapes)}"
    for name, array in record.items():
        if array.dtype not in WIRE_DTYPES:
            return None, f"'{name}' has dtype {array.dtype}, expected one of {WIRE_DTYPES}"
        if tuple(array.shape) != tuple(expected_shapes[name]):
            return None, (
                f"'{name}' has shape {list(array.shape)}, expected {list(expected_shapes[name])}"
            )
    tensors = from_array_record(record, dtype=torch.float32)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            return None, f"'{name}' holds NaN or Inf"
    return tensors, None


# ------------------------------------------------------------------ train.forward
@dataclass(frozen=True)
class ForwardRequest:
    """What a node reads from ``train.forward``."""

    plans: dict[int, BatchPlan]
    head: ArrayRecord | None
    restore: dict[int, dict[str, ArrayRecord | ConfigRecord]]


def forward_request(
    plans: Mapping[int, BatchPlan],
    head: ArrayRecord | None,
    restore: Mapping[int, Mapping[str, ArrayRecord | ConfigRecord]],
) -> RecordDict:
    """Server: the batches to draw, the head to load first (if due) and saved states."""
    content = RecordDict({CONFIG: ConfigRecord(plan_record(plans))})
    if head is not None:
        content[HEAD] = head
    for cid, parts in restore.items():
        for part, record in parts.items():
            content[client_state_key(cid, part, prefix="restore")] = record
    return content


def read_forward_request(content: RecordDict) -> ForwardRequest:
    """Client: the inverse of :func:`forward_request`."""
    plans = read_plans(content[CONFIG])  # type: ignore[arg-type]
    restore = {
        cid: {
            part: content[key]
            for part in CLIENT_STATE_PARTS
            if (key := client_state_key(cid, part, prefix="restore")) in content
        }
        for cid in plans
    }
    return ForwardRequest(plans, content.get(HEAD), restore)  # type: ignore[arg-type]


def put_activations(
    reply: RecordDict, cid: int, acts: Mapping[str, Tensor], dtype: torch.dtype | None
) -> None:
    """Client: client ``cid``'s cut-layer activations (the reply of forward and backward)."""
    reply[act_key(cid)] = to_array_record(dict(acts), dtype)
    reply[stats_key(cid)] = MetricRecord({"num-examples": next(iter(acts.values())).shape[0]})


def read_activations(
    content: RecordDict,
    plans: Mapping[int, BatchPlan],
    stream_lengths: Mapping[str, int],
    width: int,
    limit: int,
) -> tuple[dict[int, dict[str, Tensor]], list[Rejection]]:
    """Server: the activations of the planned clients of one node, checked.

    A planned client without activations had no data left and sits out (no rejection).
    """
    acts: dict[int, dict[str, Tensor]] = {}
    rejected = []
    for cid in sorted(plans):
        if act_key(cid) not in content:
            continue
        shapes = {s: (plans[cid].size, n, width) for s, n in stream_lengths.items()}
        tensors, problem = checked_arrays(content[act_key(cid)], shapes, limit)  # type: ignore[arg-type]
        if tensors is None:
            rejected.append(Rejection(cid, f"activations: {problem}"))
            continue
        acts[cid] = tensors
    return acts, rejected


# ------------------------------------------------------------------ train.loss
def loss_request(plans: Mapping[int, BatchPlan], outputs: Mapping[int, Tensor]) -> RecordDict:
    """Server: each client's slice of the server output, with its batch plan."""
    content = RecordDict({CONFIG: ConfigRecord(plan_record(plans))})
    for cid in sorted(plans):
        content[out_key(cid)] = to_array_record({"out": outputs[cid]})
    return content


def read_loss_request(content: RecordDict) -> dict[int, tuple[BatchPlan, Tensor]]:
    """Client: each client's plan and output slice."""
    plans = read_plans(content[CONFIG])  # type: ignore[arg-type]
    return {
        cid: (plan, from_array_record(content[out_key(cid)])["out"])  # type: ignore[arg-type]
        for cid, plan in plans.items()
    }


@dataclass(frozen=True)
class LossResult:
    """One client's answer to the loss leg: dL_n/dz_n and what it measured."""

    grad: Tensor
    loss: float
    correct: int
    num_examples: int


def put_loss(reply: RecordDict, cid: int, result: LossResult) -> None:
    """Client: ``dL_n/dz_n`` of client ``cid`` and its loss and correct count."""
    reply[grad_key(cid)] = to_array_record({"out": result.grad})
    reply[stats_key(cid)] = MetricRecord(
        {"loss": result.loss, "correct": result.correct, "num-examples": result.num_examples}
    )


def read_loss(
    content: RecordDict, shapes: Mapping[int, tuple[int, ...]], limit: int
) -> tuple[dict[int, LossResult], list[Rejection]]:
    """Server: the output gradients and statistics of one node's clients, checked."""
    results: dict[int, LossResult] = {}
    rejected = []
    for cid in sorted(shapes):
        if grad_key(cid) not in content:
            continue
        got, problem = checked_arrays(content[grad_key(cid)], {"out": shapes[cid]}, limit)  # type: ignore[arg-type]
        if got is None:
            rejected.append(Rejection(cid, f"output gradient: {problem}"))
            continue
        s = content[stats_key(cid)]
        results[cid] = LossResult(
            got["out"],
            float(s["loss"]),  # type: ignore[arg-type]
            int(s["correct"]),  # type: ignore[arg-type]
            int(s["num-examples"]),  # type: ignore[arg-type]
        )
    return results, rejected


# ------------------------------------------------------------------ train.backward
@dataclass(frozen=True)
class BackwardRequest:
    """What a node reads from ``train.backward``."""

    lr: float
    plans: dict[int, BatchPlan]
    next_plans: dict[int, BatchPlan]
    cut: dict[int, dict[str, Tensor]]


def backward_request(
    plans: Mapping[int, BatchPlan],
    cut: Mapping[int, Mapping[str, Tensor]],
    lr: float,
    next_plans: Mapping[int, BatchPlan],
    dtype: torch.dtype | None,
) -> RecordDict:
    """Server: the cut-layer gradients of the batches just trained, and the next batches."""
    config = {"lr": lr, **plan_record(plans), **plan_record(next_plans, prefix="next-")}
    content = RecordDict({CONFIG: ConfigRecord(config)})  # type: ignore[arg-type]
    for cid in sorted(plans):
        content[cut_key(cid)] = to_array_record(dict(cut[cid]), dtype)
    return content


def read_backward_request(content: RecordDict) -> BackwardRequest:
    """Client: the inverse of :func:`backward_request` (gradients as float32)."""
    config = content[CONFIG]
    plans = read_plans(config)  # type: ignore[arg-type]
    return BackwardRequest(
        lr=float(config["lr"]),  # type: ignore[arg-type, index]
        plans=plans,
        next_plans=read_plans(config, prefix="next-"),  # type: ignore[arg-type]
        cut={
            cid: from_array_record(content[cut_key(cid)], dtype=torch.float32)  # type: ignore[arg-type]
            for cid in plans
        },
    )


# The reply: the next batch's activations (put_activations / read_activations).


# ------------------------------------------------------------------ query.head, query.state
def clients_request(cids: list[int]) -> RecordDict:
    """Server: ask a node about some of its clients (``query.head``, ``query.state``)."""
    return RecordDict({CONFIG: ConfigRecord({"clients": cids})})


def read_clients_request(content: RecordDict) -> list[int]:
    """Client: which clients the server asks about."""
    return [int(c) for c in content[CONFIG]["clients"]]  # type: ignore[union-attr, index]


def put_head(reply: RecordDict, cid: int, head: ArrayRecord) -> None:
    """Client: client ``cid``'s head weights."""
    reply[head_key(cid)] = head


def read_heads(content: RecordDict, cids: list[int]) -> dict[int, ArrayRecord]:
    """Server: the heads a node sent for ``cids`` (a missing one is simply absent)."""
    return {cid: content[head_key(cid)] for cid in cids if head_key(cid) in content}  # type: ignore[misc]


def put_state(reply: RecordDict, cid: int, parts: Mapping[str, ArrayRecord | ConfigRecord]) -> None:
    """Client: the stored parts of client ``cid``'s state, as they are."""
    for part, record in parts.items():
        reply[client_state_key(cid, part)] = record


def read_states(content: RecordDict, cids: list[int]) -> dict[int, dict[str, object]]:
    """Server: each client's state parts as plain tensors (head, optim) and a dict (cfg)."""
    states: dict[int, dict[str, object]] = {}
    for cid in cids:
        parts: dict[str, object] = {}
        for part in CLIENT_STATE_PARTS:
            record = content.get(client_state_key(cid, part))
            if isinstance(record, ArrayRecord):
                parts[part] = from_array_record(record)
            elif record is not None:
                parts[part] = dict(record.items())
        if parts:
            states[cid] = parts
    return states


def restore_records(parts: Mapping[str, object]) -> dict[str, ArrayRecord | ConfigRecord]:
    """Server: a checkpointed client state (as :func:`read_states` gave it) as records."""
    return {
        part: ConfigRecord(value) if part.endswith(".cfg") else to_array_record(value)  # type: ignore[arg-type]
        for part, value in parts.items()
    }

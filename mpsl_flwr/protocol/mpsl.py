"""The MPSL legs as Flower records: both halves of every leg, side by side.

One step (Fudala et al., arXiv 2502.06355), as messages:

``train.forward``  server -> node: which batch each logical client draws (and, when
                   due, the aggregated head or a checkpointed state to restore). Reply:
                   the cut-layer activations ``act.<cid>`` and ``stats.<cid>``.
``train.loss``     server -> node: each client's logit slice ``out.<cid>`` (with
                   ``label-privacy=client-tail``: its pooled embeddings, and the
                   learning rate of the client's classifier). Reply: ``grad.<cid>``
                   (dL_n/dz_n) and ``stats.<cid>`` (loss, correct). Labels never leave
                   the client. Retrieval has no labels and skips it.
``train.backward`` server -> node: cut-layer gradients ``cut.<cid>``, the learning rate,
                   and optionally the next batch to draw; the reply then carries the
                   next activations, so a steady-state step costs two round trips.
``query.head``     each client's head (end of epoch), for the FedAvg of the heads.
``query.state``    each client's head and optimiser state (for a checkpoint); a resumed
                   run sends them back with the client's first ``train.forward``.

For each leg this module holds, in this order: what the server sends
(``*_request``), how the client reads it (``read_*_request``), what the client replies
(``put_*``), and how the server reads the reply (``read_*``). Everything a client sends
is checked on the way in by the gate of :mod:`mpsl_flwr.protocol.gate` (record type,
size, names, dtype, shape from the plan, payload length, finiteness, magnitude, typed and
range-checked statistics), so a bad payload is refused before it is decoded into the
server's tensors; a refusal is a :class:`Rejection` that the server's leg logs and counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues
from torch import Tensor

from mpsl_flwr.protocol.gate import (
    WIRE_DTYPES,
    PayloadError,
    checked_arrays,
    checking,
    count_value,
    decode_array,
    loss_value,
    typed_record,
)
from mpsl_flwr.protocol.packing import WIRE_DTYPES as WIRE_TORCH_DTYPES
from mpsl_flwr.protocol.packing import pack
from mpsl_flwr.state import from_array_record, to_array_record

__all__ = ["WIRE_DTYPES", "PayloadError"]  # re-exported: the leg codecs' vocabulary

FORWARD = "train.forward"
LOSS = "train.loss"
BACKWARD = "train.backward"
QUERY_HEAD = "query.head"
QUERY_STATE = "query.state"

CONFIG = "config"
HEAD = "head"
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


STEP_GROUP = re.compile(r"^e(\d+)s(\d+)$")


def step_group(epoch: int, step: int) -> str:
    """The group id of the legs of one step: ``e<epoch>s<step>`` (both from 0)."""
    return f"e{epoch}s{step}"


def step_of(group_id: str) -> tuple[int, int] | None:
    """``(epoch, step)`` of a step's group id; None for other groups (discovery, head
    queries, checkpoints)."""
    m = STEP_GROUP.match(group_id)
    return (int(m.group(1)), int(m.group(2))) if m else None


def wire_dtype(activation_dtype: str) -> torch.dtype:
    """The dtype cut-layer tensors (activations up, their gradients down) travel in
    (``activation-dtype``; bfloat16 as its bit patterns, :mod:`~mpsl_flwr.protocol.packing`)."""
    return WIRE_TORCH_DTYPES[activation_dtype]


@dataclass(frozen=True)
class BatchPlan:
    """Which slice of its epoch permutation a client draws: ``[offset, offset + size)``."""

    epoch: int
    offset: int
    size: int


# For the mean cross-entropy of b_n samples, every entry of dL_n/dz_n is
# (softmax - one-hot) / b_n, so lies in [-1/b_n, 1/b_n]; twice that leaves room for
# rounding and refuses anything that could steer the server model more than a sample can.
GRAD_BOUND_MARGIN = 2.0
# A head whose L2 norm (all parameters together) is more than this multiple of the
# current aggregated head's is refused before the average: FedAvg of a few clients'
# heads cannot absorb one that has blown up, and honest local training over one epoch
# moves a head's norm by a few percent, not by a factor of ten.
MAX_HEAD_NORM_RATIO = 10.0


@dataclass(frozen=True)
class Rejection:
    """A client's payload that failed a check: who sent it and what was wrong."""

    cid: int
    problem: str


# ------------------------------------------------------------------ plans and the gate
def plan_record(plans: Mapping[int, BatchPlan], prefix: str = "") -> dict[str, ConfigRecordValues]:
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
    return {int(c): BatchPlan(int(e), int(o), int(s)) for c, e, o, s in zip(*cols, strict=True)}


def max_bytes(megabytes: float) -> int:
    """``max-client-mb`` in bytes."""
    return int(np.floor(megabytes * 1e6))


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
    reply[act_key(cid)] = pack({cid: acts}, dtype)
    reply[stats_key(cid)] = MetricRecord({"num-examples": next(iter(acts.values())).shape[0]})


def read_activations(
    content: RecordDict,
    plans: Mapping[int, BatchPlan],
    stream_lengths: Mapping[str, int],
    width: int,
    limit: int,
    max_abs: float | None = None,
) -> tuple[dict[int, dict[str, Tensor]], list[Rejection]]:
    """Server: the activations of the planned clients of one node, checked.

    Each stream must be exactly ``[b_n, tokens, width]`` with ``|value| <= max_abs``, and
    ``stats.<cid>`` must count exactly ``b_n`` examples. A planned client without
    activations had no data left and sits out (no rejection).
    """
    acts: dict[int, dict[str, Tensor]] = {}
    rejected: list[Rejection] = []
    for cid in sorted(plans):
        if act_key(cid) not in content:
            continue
        rows = plans[cid].size
        shapes = {s: (rows, n, width) for s, n in stream_lengths.items()}
        try:
            with checking("activations"):
                tensors = checked_arrays(
                    content, act_key(cid), shapes, limit, max_abs, "max-abs-activation"
                )
            with checking("statistics"):
                count_value(
                    typed_record(content, stats_key(cid), MetricRecord), "num-examples", rows, rows
                )
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
            continue
        acts[cid] = tensors
    return acts, rejected


# ------------------------------------------------------------------ train.loss
@dataclass(frozen=True)
class LossRequest:
    """What a node reads from ``train.loss``: each client's plan and output slice, and
    (client tail) the learning rate of the classifier's step."""

    outputs: dict[int, tuple[BatchPlan, Tensor]]
    lr: float | None


def loss_request(
    plans: Mapping[int, BatchPlan], outputs: Mapping[int, Tensor], lr: float | None = None
) -> RecordDict:
    """Server: each client's slice of the server output (logits, or with a client tail
    pooled embeddings), with its batch plan; ``lr`` when the client trains a tail."""
    config: dict[str, ConfigRecordValues] = dict(plan_record(plans))
    if lr is not None:
        config["lr"] = lr
    content = RecordDict({CONFIG: ConfigRecord(config)})
    for cid in sorted(plans):
        content[out_key(cid)] = to_array_record({"out": outputs[cid]})
    return content


def read_loss_request(content: RecordDict) -> LossRequest:
    """Client: the inverse of :func:`loss_request`."""
    config = typed_record(content, CONFIG, ConfigRecord)
    outputs = {
        cid: (plan, from_array_record(content[out_key(cid)])["out"])  # type: ignore[arg-type]
        for cid, plan in read_plans(config).items()
    }
    lr = config.get("lr")
    return LossRequest(outputs, None if lr is None else float(lr))  # type: ignore[arg-type]


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
    content: RecordDict,
    shapes: Mapping[int, tuple[int, ...]],
    limit: int,
    per_sample: float = 1.0,
) -> tuple[dict[int, LossResult], list[Rejection]]:
    """Server: the output gradients and statistics of one node's clients, checked.

    ``dL_n/dz_n`` must have the shape of the output slice sent, with every entry within
    ``GRAD_BOUND_MARGIN * per_sample / b_n``, where ``per_sample`` bounds one sample's
    loss gradient at what was sent (1 at the logits; more at a client tail's input);
    the statistics must be a finite loss >= 0, ``0 <= correct <= b_n`` and
    ``num-examples == b_n``.
    """
    results: dict[int, LossResult] = {}
    rejected: list[Rejection] = []
    for cid in sorted(shapes):
        if grad_key(cid) not in content:
            continue
        try:
            results[cid] = _read_loss(content, cid, shapes[cid], limit, per_sample)
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
    return results, rejected


def _read_loss(
    content: RecordDict, cid: int, shape: tuple[int, ...], limit: int, per_sample: float
) -> LossResult:
    rows = shape[0]
    with checking("output gradient"):
        grad = checked_arrays(
            content,
            grad_key(cid),
            {"out": shape},
            limit,
            GRAD_BOUND_MARGIN * per_sample / rows,
            f"{GRAD_BOUND_MARGIN * per_sample:.3g}/b_n for the mean loss of b_n={rows} samples",
        )["out"]
    with checking("statistics"):
        stats = typed_record(content, stats_key(cid), MetricRecord)
        return LossResult(
            grad,
            loss_value(stats),
            count_value(stats, "correct", 0, rows),
            count_value(stats, "num-examples", rows, rows),
        )


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
    config: dict[str, ConfigRecordValues] = {
        "lr": lr,
        **plan_record(plans),
        **plan_record(next_plans, prefix="next-"),
    }
    content = RecordDict({CONFIG: ConfigRecord(config)})
    for cid in sorted(plans):
        content[cut_key(cid)] = pack({cid: cut[cid]}, dtype)
    return content


def read_backward_request(content: RecordDict) -> BackwardRequest:
    """Client: the inverse of :func:`backward_request` (gradients as float32)."""
    config = typed_record(content, CONFIG, ConfigRecord)
    plans = read_plans(config)
    return BackwardRequest(
        lr=float(config["lr"]),  # type: ignore[arg-type]
        plans=plans,
        next_plans=read_plans(config, prefix="next-"),
        cut={cid: _as_sent(typed_record(content, cut_key(cid), ArrayRecord)) for cid in plans},
    )


# The reply: the next batch's activations (put_activations / read_activations).


def _as_sent(record: ArrayRecord) -> dict[str, Tensor]:
    """Client: a record of the server's as float32 tensors of the shapes it declares (the
    gate's decoding, so a bfloat16 or float16 payload reads exactly as it was written)."""
    return {name: decode_array(name, a, tuple(a.shape)) for name, a in record.items()}


# ------------------------------------------------------------------ query.head, query.state
def clients_request(cids: list[int]) -> RecordDict:
    """Server: ask a node about some of its clients (``query.head``, ``query.state``)."""
    return RecordDict({CONFIG: ConfigRecord({"clients": cids})})


def read_clients_request(content: RecordDict) -> list[int]:
    """Client: which clients the server asks about."""
    return [int(c) for c in content[CONFIG]["clients"]]  # type: ignore[union-attr]


def put_head(reply: RecordDict, cid: int, head: ArrayRecord) -> None:
    """Client: client ``cid``'s head weights."""
    reply[head_key(cid)] = head


def read_heads(
    content: RecordDict,
    cids: list[int],
    expected: Mapping[str, Tensor],
    limit: int,
) -> tuple[dict[int, ArrayRecord], list[Rejection]]:
    """Server: the heads a node sent for ``cids``, checked against the aggregated head.

    ``expected`` is the current aggregated head: each head must name exactly its
    parameters, with their shapes, finite, and an overall L2 norm at most
    ``MAX_HEAD_NORM_RATIO`` times its norm. A missing head is simply absent. The records
    are returned as they came, so the average is what it always was.
    """
    shapes = {name: tuple(t.shape) for name, t in expected.items()}
    reference = _norm(expected.values())
    heads: dict[int, ArrayRecord] = {}
    rejected: list[Rejection] = []
    for cid in cids:
        if head_key(cid) not in content:
            continue
        try:
            with checking("head"):
                heads[cid] = _check_head(content, cid, shapes, limit, reference)
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
    return heads, rejected


def _norm(tensors: Iterable[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _check_head(
    content: RecordDict,
    cid: int,
    shapes: Mapping[str, tuple[int, ...]],
    limit: int,
    reference: float,
) -> ArrayRecord:
    tensors = checked_arrays(content, head_key(cid), shapes, limit)
    norm = _norm(tensors.values())
    if norm > MAX_HEAD_NORM_RATIO * reference:
        raise PayloadError(
            f"norm {norm:.3g} is more than {MAX_HEAD_NORM_RATIO:g}x the aggregated "
            f"head's ({reference:.3g})"
        )
    return typed_record(content, head_key(cid), ArrayRecord)


def put_state(reply: RecordDict, cid: int, parts: Mapping[str, ArrayRecord | ConfigRecord]) -> None:
    """Client: the stored parts of client ``cid``'s state, as they are."""
    for part, record in parts.items():
        reply[client_state_key(cid, part)] = record


OPTIMIZER_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
OPTIMIZER_ENTRY = re.compile(r"^(\d+)\.(exp_avg|exp_avg_sq|max_exp_avg_sq|step)$")
OPTIMIZER_CFG_KEYS = {"param-groups", "scalars"}


def read_states(
    content: RecordDict,
    cids: list[int],
    head_shapes: Mapping[str, tuple[int, ...]],
    param_shapes: list[tuple[int, ...]],
    limit: int,
) -> tuple[dict[int, dict[str, object]], list[Rejection]]:
    """Server: each client's state parts as plain tensors (head, optim) and a dict (cfg),
    checked before they go into a checkpoint.

    The head must be exactly ``head_shapes``; each AdamW entry ``<i>.<moment>`` must have
    the shape of the head's ``i``-th trainable parameter (``param_shapes``), ``<i>.step``
    one value (shape [1]); all finite, within ``limit`` bytes; the optimiser config two strings
    (the client parses them; the server only stores them). A client with a bad part is
    left out of the checkpoint whole.
    """
    states: dict[int, dict[str, object]] = {}
    rejected: list[Rejection] = []
    for cid in cids:
        try:
            with checking("client state"):
                parts = _read_state(content, cid, head_shapes, param_shapes, limit)
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
            continue
        if parts:
            states[cid] = parts
    return states, rejected


def _read_state(
    content: RecordDict,
    cid: int,
    head_shapes: Mapping[str, tuple[int, ...]],
    param_shapes: list[tuple[int, ...]],
    limit: int,
) -> dict[str, object]:
    parts: dict[str, object] = {}
    head, optim, cfg = (client_state_key(cid, part) for part in CLIENT_STATE_PARTS)
    if head in content:
        parts["head"] = checked_arrays(content, head, head_shapes, limit)
    if optim in content:
        names = list(typed_record(content, optim, ArrayRecord))
        shapes = {name: _optimizer_entry_shape(name, param_shapes) for name in names}
        parts["optim"] = checked_arrays(content, optim, shapes, limit)
    if cfg in content:
        record = typed_record(content, cfg, ConfigRecord)
        if set(record) != OPTIMIZER_CFG_KEYS or not all(
            isinstance(v, str) for v in record.values()
        ):
            raise PayloadError(f"'{cfg}' must hold the strings {sorted(OPTIMIZER_CFG_KEYS)}")
        if record.count_bytes() > limit:
            raise PayloadError(f"'{cfg}' exceeds max-client-mb")
        parts["optim.cfg"] = dict(record.items())
    return parts


def _optimizer_entry_shape(name: str, param_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    m = OPTIMIZER_ENTRY.match(name)
    if m is None or int(m.group(1)) >= len(param_shapes):
        raise PayloadError(
            f"optimiser entry '{name}' is not <i>.<moment> for one of the head's "
            f"{len(param_shapes)} trainable parameters"
        )
    # Flower carries AdamW's 0-d step as shape [1] (as it does every 0-d array).
    return (1,) if m.group(2) == "step" else param_shapes[int(m.group(1))]


def restore_records(parts: Mapping[str, object]) -> dict[str, ArrayRecord | ConfigRecord]:
    """Server: a checkpointed client state (as :func:`read_states` gave it) as records."""
    return {
        part: ConfigRecord(value) if part.endswith(".cfg") else to_array_record(value)  # type: ignore[arg-type]
        for part, value in parts.items()
    }

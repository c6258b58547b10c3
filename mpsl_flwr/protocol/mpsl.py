"""The MPSL legs as Flower records: both halves of every leg, side by side.

One step (Fudala et al., arXiv 2502.06355), as messages:

``train.forward``  server -> node: which batch each logical client draws (and, when
                   due, the aggregated head or a checkpointed state to restore). Reply:
                   the cut-layer activations ``act`` and the index ``stats``.
``train.loss``     server -> node: each client's logit slice, in ``out`` (with
                   ``label-privacy=client-tail``: its pooled embeddings, and the
                   learning rate of the client's classifier). Reply: ``grad``
                   (dL_n/dz_n) and ``stats`` (the index, each loss and correct count).
                   Labels never leave the client. Retrieval has no labels and skips it.
``train.backward`` server -> node: cut-layer gradients ``cut``, the learning rate,
                   and optionally the next batch to draw; the reply then carries the
                   next activations, so a steady-state step costs two round trips.
``query.head``     each client's head (end of epoch), for the FedAvg of the heads.
``query.state``    each client's head and optimiser state (for a checkpoint); a resumed
                   run sends them back with the client's first ``train.forward``.

The cut-layer tensors and the output slices and their gradients travel *packed*
(:mod:`mpsl_flwr.protocol.packing`): one Array per stream holds the rows of all the
node's clients of the leg, in ascending client id. A request's rows per client are its
plan's; a reply states them in ``stats`` (``clients``, ``num-examples``, with the
per-client statistics as lists in the same order), and the gate checks that index
against the plan before it reads a value. A payload that is malformed as a whole (index,
record type, size, names, dtype, shape, payload length) drops every planned client of
the node; bad values (non-finite, too large, lying statistics) drop only their client.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues
from torch import Tensor

from mpsl_flwr.protocol.gate import (
    WIRE_DTYPES,
    PayloadError,
    check_magnitude,
    check_values,
    checked_arrays,
    checking,
    column,
    count_of,
    decode_array,
    decoded_arrays,
    loss_of,
    packed_index,
    typed_record,
)
from mpsl_flwr.protocol.packing import WIRE_DTYPES as WIRE_TORCH_DTYPES
from mpsl_flwr.protocol.packing import pack, unpack
from mpsl_flwr.state import to_array_record

__all__ = ["WIRE_DTYPES", "PayloadError"]  # re-exported: the leg codecs' vocabulary

FORWARD = "train.forward"
LOSS = "train.loss"
BACKWARD = "train.backward"
QUERY_HEAD = "query.head"
QUERY_STATE = "query.state"

CONFIG = "config"
HEAD = "head"
CLIENT_STATE_PARTS = ("head", "optim", "optim.cfg")


ACT = "act"  # a reply's activations, one Array per stream
OUT = "out"  # the output slices of a loss request ("out")
GRAD = "grad"  # the output gradients of a loss reply ("out")
CUT = "cut"  # the cut-layer gradients of a backward request, one Array per stream
STATS = "stats"  # a reply's index (clients, num-examples) and per-client statistics
OUTPUT = "out"  # the one stream of OUT and GRAD


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


# ------------------------------------------------------------------ packed payloads
PerClient = dict[int, dict[str, Tensor]]


def rows_of(plans: Mapping[int, BatchPlan]) -> dict[int, int]:
    """The rows of each client in a request packed for ``plans``."""
    return {cid: plan.size for cid, plan in plans.items()}


def unpacked(record: ArrayRecord, rows: Mapping[int, int]) -> PerClient:
    """Client (and the server's recordings): a packed record of the server's (or one the
    gate has checked) as float32 tensors per client, split at ``rows``."""
    tensors = {name: decode_array(name, a, tuple(a.shape)) for name, a in record.items()}
    return unpack(tensors, rows)


def _index(per_client: Mapping[int, Mapping[str, Tensor]]) -> dict[str, list[int]]:
    """Client: the index of a packed reply (the rows of each client, in packing order)."""
    cids = sorted(per_client)
    return {
        "clients": cids,
        "num-examples": [next(iter(per_client[c].values())).shape[0] for c in cids],
    }


def _read_packed(
    content: RecordDict,
    key: str,
    what: str,
    planned_rows: Mapping[int, int],
    shapes: Callable[[int], dict[str, tuple[int, ...]]],
    limit: int,
) -> tuple[MetricRecord, dict[int, int], PerClient]:
    """Server: a packed reply's statistics, index and per-client tensors, if the whole is
    well-formed: the index against the plan, then the arrays (``shapes(total rows)``,
    at most ``limit`` bytes per client listed) on their serialized form. Their values are
    the caller's to check, client by client."""
    with checking("statistics"):
        stats = typed_record(content, STATS, MetricRecord)
        rows = packed_index(stats, planned_rows)
    with checking(what):
        tensors = decoded_arrays(content, key, shapes(sum(rows.values())), limit * len(rows))
    return stats, rows, unpack(tensors, rows)


def _refuse_all(plans: Iterable[int], err: PayloadError) -> list[Rejection]:
    """A node's payload is malformed as a whole: none of its rows can be trusted."""
    return [Rejection(cid, str(err)) for cid in sorted(plans)]


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
    reply: RecordDict, acts: Mapping[int, Mapping[str, Tensor]], dtype: torch.dtype | None
) -> None:
    """Client: the cut-layer activations of the node's clients that drew a batch (the
    reply of forward and backward), packed, and their index."""
    if acts:
        reply[ACT] = pack(acts, dtype)
        reply[STATS] = MetricRecord(_index(acts))  # type: ignore[arg-type]


def read_activations(
    content: RecordDict,
    plans: Mapping[int, BatchPlan],
    stream_lengths: Mapping[str, int],
    width: int,
    limit: int,
    max_abs: float | None = None,
) -> tuple[PerClient, list[Rejection]]:
    """Server: the activations of the planned clients of one node, checked.

    Each client listed must be planned, with exactly its ``b_n`` rows; each stream must
    be exactly ``[sum of b_n, tokens, width]``, and each client's rows ``|value| <=
    max_abs``. A planned client that is not listed is refused too: the plan gives only
    clients with data left, so an honest node always answers for each of them.
    """
    if plans and ACT not in content and STATS not in content:
        return {}, _refuse_all(plans, PayloadError("activations: no activations in the reply"))
    try:
        _, _, acts = _read_packed(
            content,
            ACT,
            "activations",
            rows_of(plans),
            lambda n: {s: (n, tokens, width) for s, tokens in stream_lengths.items()},
            limit,
        )
    except PayloadError as err:
        return {}, _refuse_all(plans, err)
    good: PerClient = {}
    rejected = [
        Rejection(cid, "activations: no activations for this planned client")
        for cid in sorted(set(plans) - set(acts))
    ]
    for cid, tensors in acts.items():
        try:
            with checking("activations"):
                check_values(tensors, max_abs, "max-abs-activation")
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
            continue
        good[cid] = tensors
    return good, rejected


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
    if plans:
        content[OUT] = pack({cid: {OUTPUT: outputs[cid]} for cid in plans})
    return content


def read_loss_request(content: RecordDict) -> LossRequest:
    """Client: the inverse of :func:`loss_request`."""
    config = typed_record(content, CONFIG, ConfigRecord)
    plans = read_plans(config)
    slices = unpacked(typed_record(content, OUT, ArrayRecord), rows_of(plans)) if plans else {}
    outputs = {cid: (plan, slices[cid][OUTPUT]) for cid, plan in plans.items()}
    lr = config.get("lr")
    return LossRequest(outputs, None if lr is None else float(lr))  # type: ignore[arg-type]


@dataclass(frozen=True)
class LossResult:
    """One client's answer to the loss leg: dL_n/dz_n and what it measured."""

    grad: Tensor
    loss: float
    correct: int
    num_examples: int


def put_loss(reply: RecordDict, results: Mapping[int, LossResult]) -> None:
    """Client: ``dL_n/dz_n`` of the node's clients, packed, with the index and each one's
    loss and correct count."""
    if not results:
        return
    cids = sorted(results)
    grads = {cid: {OUTPUT: results[cid].grad} for cid in cids}
    reply[GRAD] = pack(grads)
    reply[STATS] = MetricRecord(
        {
            **_index(grads),
            "loss": [float(results[c].loss) for c in cids],
            "correct": [results[c].correct for c in cids],
        }
    )


def read_loss(
    content: RecordDict,
    shapes: Mapping[int, tuple[int, ...]],
    limit: int,
    per_sample: float = 1.0,
) -> tuple[dict[int, LossResult], list[Rejection]]:
    """Server: the output gradients and statistics of one node's clients, checked.

    ``shapes`` are the output slices sent (their rows are the index the reply must
    state). Each client's ``dL_n/dz_n`` must have every entry within ``GRAD_BOUND_MARGIN
    * per_sample / b_n``, where ``per_sample`` bounds one sample's loss gradient at what
    was sent (1 at the logits; more at a client tail's input); its statistics must be a
    finite loss >= 0 and ``0 <= correct <= b_n``.
    """
    if GRAD not in content and STATS not in content:
        return {}, []
    rest = next(iter(shapes.values()))[1:] if shapes else ()
    try:
        stats, rows, grads = _read_packed(
            content,
            GRAD,
            "output gradient",
            {cid: shape[0] for cid, shape in shapes.items()},
            lambda n: {OUTPUT: (n, *rest)},
            limit,
        )
        with checking("statistics"):
            losses = column(stats, "loss", len(rows))
            corrects = column(stats, "correct", len(rows))
    except PayloadError as err:
        return {}, _refuse_all(shapes, err)
    results: dict[int, LossResult] = {}
    rejected: list[Rejection] = []
    for (cid, n), loss, correct in zip(rows.items(), losses, corrects, strict=True):
        try:
            results[cid] = _loss_result(cid, grads[cid][OUTPUT], n, loss, correct, per_sample)
        except PayloadError as err:
            rejected.append(Rejection(cid, str(err)))
    return results, rejected


def _loss_result(
    cid: int, grad: Tensor, rows: int, loss: object, correct: object, per_sample: float
) -> LossResult:
    """One client's part of a loss reply, its values checked."""
    with checking("output gradient"):
        check_magnitude(
            OUTPUT,
            grad,
            GRAD_BOUND_MARGIN * per_sample / rows,
            f"{GRAD_BOUND_MARGIN * per_sample:.3g}/b_n for the mean loss of b_n={rows} samples",
        )
    with checking("statistics"):
        return LossResult(
            grad,
            loss_of(loss, f"'loss' of client {cid}"),
            count_of(correct, f"'correct' of client {cid}", 0, rows),
            rows,
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
    if plans:
        content[CUT] = pack({cid: cut[cid] for cid in plans}, dtype)
    return content


def read_backward_request(content: RecordDict) -> BackwardRequest:
    """Client: the inverse of :func:`backward_request` (gradients as float32)."""
    config = typed_record(content, CONFIG, ConfigRecord)
    plans = read_plans(config)
    return BackwardRequest(
        lr=float(config["lr"]),  # type: ignore[arg-type]
        plans=plans,
        next_plans=read_plans(config, prefix="next-"),
        cut=unpacked(typed_record(content, CUT, ArrayRecord), rows_of(plans)) if plans else {},
    )


# The reply: the next batch's activations (put_activations / read_activations).


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

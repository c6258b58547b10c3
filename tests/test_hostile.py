"""A hostile client cannot crash, stall, poison or impersonate (issue 16).

Each case is an attack a client can mount with nothing but its replies, tried through
:class:`~mpsl_flwr.local_grid.LocalGrid` (``reply_fault`` rewrites what a node sends).
Each asserts that the run goes on (or fails clearly where that is right), that the
warning names the offender (client, node, leg, what was wrong), that the bad step counts
in ``dropped-client-steps``, and that the server model is bit-identical to before the
bad payload. See docs/security.md for what is and is not validated.

The issue's items and where each is tried: 1 (record types, malformed arrays), 2 (more
rows than planned), 4 (huge values) and 6 (lying statistics) in
``test_a_bad_step_reply_is_rejected_named_and_leaves_the_server_untouched``; 1 for
checkpointed state in ``test_a_bad_client_state_is_left_out_of_the_checkpoint``; 3
(heads) in ``test_a_bad_head_is_left_out_of_the_average``; 5 (identity) and 6
(discovery) in the discovery and registry tests below; runs that trained nothing in
``test_an_epoch_that_trained_nothing_fails_the_run``. The packed form of issue 14 (one
array per stream for all clients of a node, an index checked against the plan) in
``test_a_bad_packed_reply_drops_its_clients_and_only_them``, bfloat16 payloads in
``test_a_bad_bfloat16_payload_is_rejected_and_leaves_the_server_untouched``. Item 7 (a
virtual client that kills its process) needs a real Ray simulation:
``tests/test_e2e.py::test_a_virtual_client_that_kills_its_process_does_not_take_the_others_down``.
Item 8 (deployment access) needs real SuperLink, nginx and SuperNode processes:
``tests/test_deploy.py::test_tls_auth_deployment_runs_mpsl_and_refuses_unregistered_nodes``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from clients.client_app import app as client_app
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.split_model import trainable_state
from mpsl_flwr.node_registry import NodeRegistry, RegisteredNode
from mpsl_flwr.protocol import discovery as D
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.protocol.transport import Exchange
from mpsl_flwr.split_server import SplitServer
from strategies.discovery import discover_clients
from strategies.mpsl import MPSL
from strategies.runner import run_experiment

Tamper = Callable[[RecordDict], None]


# ------------------------------------------------------------------ tampering helpers
def _arrays(key: str, change: Callable[[Array], Array]) -> Tamper:
    """Rewrite every Array of record ``key`` with ``change``."""

    def tamper(content: RecordDict) -> None:
        record = content[key]
        content[key] = ArrayRecord({n: change(a) for n, a in record.items()})  # type: ignore[union-attr]

    return tamper


def _values(key: str, change: Callable[[np.ndarray], np.ndarray]) -> Tamper:
    """Rewrite the values of record ``key`` (a well-formed Array of the new values)."""
    return _arrays(key, lambda a: Array(np.ascontiguousarray(change(a.numpy().copy()))))


def _replace(key: str, record: object) -> Tamper:
    def tamper(content: RecordDict) -> None:
        content[key] = record  # type: ignore[assignment]

    return tamper


def _delete(key: str) -> Tamper:
    def tamper(content: RecordDict) -> None:
        del content[key]

    return tamper


def _stats(key: str, **changes: object) -> Tamper:
    """Change some entries of the MetricRecord ``key``."""

    def tamper(content: RecordDict) -> None:
        values = dict(content[key].items())  # type: ignore[union-attr]
        values.update({k.replace("_", "-"): v for k, v in changes.items()})
        content[key] = MetricRecord(values)  # type: ignore[arg-type]

    return tamper


def _header_disagrees(a: Array) -> Array:
    """The header says one shape, the payload holds fewer bytes."""
    return Array(a.dtype, tuple(a.shape), a.stype, a.data[:-64])


def _unknown_stype(a: Array) -> Array:
    return Array(a.dtype, tuple(a.shape), "torch.tensor", a.data)


def _rows(factor: float) -> Callable[[Array], Array]:
    """The header claims the planned shape; the payload holds ``factor`` times the rows."""

    def change(a: Array) -> Array:
        values = a.numpy()
        n = max(1, int(len(values) * factor))
        more = np.concatenate([values] * math.ceil(factor))[:n] if factor > 1 else values[:n]
        return Array(a.dtype, tuple(a.shape), a.stype, Array(np.ascontiguousarray(more)).data)

    return change


def _trailing_bytes(a: Array) -> Array:
    """A well-formed .npy payload (header agrees) followed by as many bytes again."""
    return Array(a.dtype, tuple(a.shape), a.stype, a.data + bytes(len(a.data)))


# ------------------------------------------------------------------ one-node, one-step runs
@dataclass
class Outcome:
    server_before: dict[str, torch.Tensor]
    server_after: dict[str, torch.Tensor]
    head_before: dict[str, torch.Tensor]
    head_after: dict[str, torch.Tensor]
    rows: list
    mpsl: MPSL


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def run_with(
    tiny,
    leg: str | tuple[str, ...],
    tamper: Tamper,
    nodes: int = 1,
    bad_node: int = 1000,
    **overrides,
) -> Outcome:
    """``nodes`` nodes; node ``bad_node``'s replies to ``leg`` (or to any of several legs)
    go through ``tamper``.

    With one node (the default) one step covers the whole epoch (batch >= data), so the
    bad reply is the only one of its leg and must leave the server untouched.
    """
    if nodes == 1:
        overrides = {"synthetic_train_size": 16, "batch_size": 16, **overrides}
    else:
        overrides = {"dirichlet_alpha": 1.0, **overrides}
    cfg = tiny(**overrides)
    mpsl = MPSL(Experiment.from_config(cfg))
    server_before = _clone(trainable_state(mpsl.server_model))
    head_before = _clone(trainable_state(mpsl.head))
    grid = LocalGrid(client_app, nodes, cfg.to_mapping())

    def reply_fault(node_id: int, reply: Message) -> Message:
        legs = (leg,) if isinstance(leg, str) else leg
        if node_id == bad_node and reply.has_content() and reply.metadata.message_type in legs:
            tamper(reply.content)
        return reply

    grid.reply_fault = reply_fault
    rows: list = []
    mpsl.start(grid, on_epoch_end=rows.append)
    return Outcome(
        server_before,
        _clone(trainable_state(mpsl.server_model)),
        head_before,
        _clone(trainable_state(mpsl.head)),
        rows,
        mpsl,
    )


def assert_identical(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def _start_with_fault(cfg, grid: LocalGrid, fault, caplog) -> tuple[MPSL, list]:
    """Run MPSL over ``grid`` with ``fault`` on every delivery, warnings captured."""
    grid.fault = fault
    mpsl = MPSL(Experiment.from_config(cfg))
    rows: list = []
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        mpsl.start(grid, on_epoch_end=rows.append)
    return mpsl, rows


ACT, GRAD, STATS = P.ACT, P.GRAD, P.STATS


def _delete_all(*keys: str) -> Tamper:
    def tamper(content: RecordDict) -> None:
        for key in keys:
            del content[key]

    return tamper


# (leg, tamper, what the warning says after "sent bad", the problem it names)
STEP_ATTACKS = {
    # Issue 15, item 15: a reply without the planned client's activations, or naming
    # another client, was reported as "unreachable" at the epoch's end and not counted.
    "act-missing": (P.FORWARD, _delete_all(ACT, STATS), "activations", "no activations"),
    "act-of-another-client": (P.FORWARD, _stats(STATS, clients=[7]), "statistics", "[7]"),
    # 1. Crash by record type or malformed array.
    "act-as-configrecord": (
        P.FORWARD,
        _replace(ACT, ConfigRecord({"x": 1})),
        "activations",
        "is a ConfigRecord",
    ),
    "grad-as-configrecord": (
        P.LOSS,
        _replace(GRAD, ConfigRecord({"x": 1})),
        "output gradient",
        "is a ConfigRecord",
    ),
    "act-header-vs-payload": (P.FORWARD, _arrays(ACT, _header_disagrees), "activations", "payload"),
    "grad-header-vs-payload": (
        P.LOSS,
        _arrays(GRAD, _header_disagrees),
        "output gradient",
        "payload",
    ),
    "act-unknown-stype": (P.FORWARD, _arrays(ACT, _unknown_stype), "activations", "stype"),
    "loss-without-stats": (P.LOSS, _delete(STATS), "statistics", "no 'stats'"),
    "loss-num-examples-nan": (
        P.LOSS,
        _stats(STATS, num_examples=[float("nan")]),
        "statistics",
        "num-examples",
    ),
    "loss-not-a-list": (P.LOSS, _stats(STATS, loss=1.0), "statistics", "'loss'"),
    "loss-list-too-long": (P.LOSS, _stats(STATS, loss=[1.0, 2.0]), "statistics", "'loss'"),
    "act-stats-as-configrecord": (
        P.FORWARD,
        _replace(STATS, ConfigRecord({"num-examples": 16})),
        "statistics",
        "is a ConfigRecord",
    ),
    # 2. More (or fewer) rows than planned behind a header that claims the plan.
    "act-more-rows": (P.FORWARD, _arrays(ACT, _rows(2)), "activations", "payload"),
    "act-fewer-rows": (P.FORWARD, _arrays(ACT, _rows(0.5)), "activations", "payload"),
    "act-trailing-bytes": (P.FORWARD, _arrays(ACT, _trailing_bytes), "activations", "payload"),
    "grad-more-rows": (P.LOSS, _arrays(GRAD, _rows(2)), "output gradient", "payload"),
    # 4. Finite but huge values.
    "act-1e30": (P.FORWARD, _values(ACT, lambda a: a * 1e30), "activations", "max-abs-activation"),
    "grad-1e3": (P.LOSS, _values(GRAD, lambda a: a * 1e3), "output gradient", "exceeds"),
    # 5. Lying statistics.
    "loss-correct-too-many": (P.LOSS, _stats(STATS, correct=[93750]), "statistics", "'correct'"),
    "loss-negative": (P.LOSS, _stats(STATS, loss=[-7e9]), "statistics", "'loss'"),
    "loss-infinite": (P.LOSS, _stats(STATS, loss=[float("inf")]), "statistics", "'loss'"),
    "loss-num-examples-lie": (
        P.LOSS,
        _stats(STATS, num_examples=[1000]),
        "statistics",
        "num-examples",
    ),
    "act-num-examples-lie": (
        P.FORWARD,
        _stats(STATS, num_examples=[1000]),
        "statistics",
        "num-examples",
    ),
}


@pytest.mark.parametrize("attack", list(STEP_ATTACKS))
def test_a_bad_step_reply_is_rejected_named_and_leaves_the_server_untouched(tiny, caplog, attack):
    leg, tamper, what, problem = STEP_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, leg, tamper)
    warning = next(r.getMessage() for r in caplog.records if "sent bad" in r.getMessage())
    assert f"Client 0 (node 1000) sent bad {what}" in warning
    assert problem in warning
    assert leg in warning
    # The one step of the epoch, and the one overtime step that retries the client.
    assert out.rows[0]["dropped-client-steps"] == 2
    assert out.rows[0]["samples-trained"] == 0
    assert_identical(out.server_before, out.server_after)


def _relabel(dtype: str) -> Callable[[Array], Array]:
    """The same payload bytes behind a header that declares ``dtype``."""
    return lambda a: Array(dtype, tuple(a.shape), a.stype, a.data)


def _bf16_bits(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Array], Array]:
    """Rewrite a bfloat16 Array's bit patterns (uint16) with ``change``."""
    return lambda a: Array(
        "bfloat16", tuple(a.shape), a.stype, Array(change(a.numpy().copy())).data
    )


# A bfloat16 run: the payload is checked as strictly as in float32 (after its bit
# patterns are read back as values: a bfloat16 can hold 1e30, which float16 cannot).
BF16_ATTACKS = {
    "header-vs-payload": (_arrays(ACT, _header_disagrees), "payload"),
    "claims-float16": (_arrays(ACT, _relabel("float16")), "payload holds uint16"),
    "claims-float32": (_arrays(ACT, _relabel("float32")), "payload holds uint16"),
    "more-rows": (_arrays(ACT, _rows(2)), "payload"),
    "nan-bits": (_arrays(ACT, _bf16_bits(lambda u: np.full_like(u, 0x7FC0))), "NaN or Inf"),
    "inf-bits": (_arrays(ACT, _bf16_bits(lambda u: np.full_like(u, 0xFF80))), "NaN or Inf"),
    "1e30": (  # 0x7149 is the bfloat16 of about 1e30
        _arrays(ACT, _bf16_bits(lambda u: np.full_like(u, 0x7149))),
        "max-abs-activation",
    ),
}


@pytest.mark.parametrize("attack", list(BF16_ATTACKS))
def test_a_bad_bfloat16_payload_is_rejected_and_leaves_the_server_untouched(tiny, caplog, attack):
    tamper, problem = BF16_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, P.FORWARD, tamper, activation_dtype="bfloat16")
    warning = next(r.getMessage() for r in caplog.records if "sent bad" in r.getMessage())
    assert "Client 0 (node 1000) sent bad activations" in warning and problem in warning
    assert out.rows[0]["samples-trained"] == 0
    assert_identical(out.server_before, out.server_after)


def test_an_honest_bfloat16_run_passes_the_gate_and_trains(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, "none", lambda content: None, activation_dtype="bfloat16")
    assert "sent bad" not in caplog.text
    assert out.rows[0]["samples-trained"] == 16
    assert any(not torch.equal(out.server_after[k], v) for k, v in out.server_before.items())


def test_other_clients_still_train_when_one_sends_huge_activations(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, P.FORWARD, _values(P.ACT, lambda a: a * 1e30), nodes=3, bad_node=1001)
    assert "Client 1 (node 1001) sent bad activations" in caplog.text
    assert 0 < out.rows[0]["samples-trained"] < 96
    assert all(torch.isfinite(v).all() for v in out.server_after.values())


def test_the_happy_path_passes_the_gate(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, "none", lambda content: None, nodes=3)
    assert "sent bad" not in caplog.text
    assert out.rows[0]["dropped-client-steps"] == 0
    assert out.rows[0]["samples-trained"] == 96


# ------------------------------------------------------------------ packed payloads
# Two nodes of two clients each: node 1000 packs clients 0 and 1 into one array per
# stream. Every check applies to the packed form; what is malformed as a whole drops
# both of its clients, a bad value only its own (issue 14).
ACT_LEGS = (P.FORWARD, P.BACKWARD)  # activations come back in both (prefetch)


def _restat(change: Callable[[dict], None]) -> Tamper:
    """Rewrite the index/statistics of a reply with ``change`` (on a dict of lists)."""

    def tamper(content: RecordDict) -> None:
        values = {k: list(v) for k, v in content[STATS].items()}  # type: ignore[union-attr, arg-type]
        change(values)
        content[STATS] = MetricRecord(values)  # type: ignore[arg-type]

    return tamper


def _shift_offsets(values: dict) -> None:
    """Move a row from the second client to the first (same total: only the offsets lie)."""
    rows = values["num-examples"]
    rows[0] += 1
    if len(rows) > 1:
        rows[1] -= 1


def _of_client(key: str, cid: int, change: Callable[[np.ndarray], np.ndarray]) -> Tamper:
    """Rewrite only client ``cid``'s rows of the packed record ``key``, where listed."""

    def tamper(content: RecordDict) -> None:
        clients = list(content[STATS]["clients"])  # type: ignore[arg-type]
        if cid not in clients:
            return
        rows = list(content[STATS]["num-examples"])  # type: ignore[arg-type]
        start = sum(rows[: clients.index(cid)])
        stop = start + rows[clients.index(cid)]

        def edit(values: np.ndarray) -> np.ndarray:
            values[start:stop] = change(values[start:stop])
            return values

        _values(key, edit)(content)

    return tamper


def _tile_past(nbytes: float) -> Callable[[np.ndarray], np.ndarray]:
    """More tokens than planned, until the payload holds more than ``nbytes``."""
    return lambda a: np.tile(a, (1, int(np.ceil(nbytes / a.nbytes))) + (1,) * (a.ndim - 2))


def _loss_of_client_1(values: dict) -> None:
    if 1 in values["clients"]:
        values["loss"][values["clients"].index(1)] = -1.0


BOTH, ONE = {0, 1}, {1}
# (legs, tamper, what the warning says after "sent bad", the problem, who is dropped)
PACKED_ATTACKS = {
    "act-clients-out-of-order": (
        ACT_LEGS,
        _restat(
            lambda v: v["clients"].reverse() if len(v["clients"]) > 1 else v.update(clients=[7])
        ),
        "statistics",
        "'clients'",
        BOTH,
    ),
    "act-offsets-not-the-plan": (
        ACT_LEGS,
        _restat(_shift_offsets),
        "statistics",
        "num-examples",
        BOTH,
    ),
    "act-short-payload": (ACT_LEGS, _arrays(ACT, _rows(0.5)), "activations", "payload", BOTH),
    "act-wrong-dtype": (
        ACT_LEGS,
        _values(ACT, lambda a: a.astype(np.float64)),
        "activations",
        "has dtype float64",
        BOTH,
    ),
    "act-too-large": (
        ACT_LEGS,
        _values(ACT, _tile_past(2.5e6)),
        "activations",
        "max-client-mb",
        BOTH,
    ),
    "act-nan-in-one-client": (
        ACT_LEGS,
        _of_client(ACT, 1, lambda a: a * np.nan),
        "activations",
        "NaN or Inf",
        ONE,
    ),
    "grad-offsets-not-the-plan": (
        P.LOSS,
        _restat(_shift_offsets),
        "statistics",
        "num-examples",
        BOTH,
    ),
    "loss-negative-for-one-client": (
        P.LOSS,
        _restat(_loss_of_client_1),
        "statistics",
        "'loss' of client 1",
        ONE,
    ),
}


@pytest.mark.parametrize("attack", list(PACKED_ATTACKS))
def test_a_bad_packed_reply_drops_its_clients_and_only_them(tiny, caplog, attack):
    legs, tamper, what, problem, dropped = PACKED_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(
            tiny,
            legs,
            lambda content: tamper(content) if STATS in content else None,  # a payload
            nodes=2,
            clients_per_node=2,
            max_client_mb=1.0,
        )
    warnings = [r.getMessage() for r in caplog.records if "sent bad" in r.getMessage()]
    named = {int(w.split()[1]) for w in warnings}
    assert named == dropped, warnings
    assert all("(node 1000)" in w and what in w and problem in w for w in warnings), warnings
    sizes = {cid: c.num_examples for cid, c in out.mpsl.clients.items()}
    assert out.rows[0]["samples-trained"] == sum(n for c, n in sizes.items() if c not in dropped)
    assert all(torch.isfinite(v).all() for v in out.server_after.values())


# ------------------------------------------------------------------ 3. heads
HEAD = P.head_key(0)
HEAD_ATTACKS = {
    "nan": (_values(HEAD, lambda a: a * np.nan), "NaN or Inf"),
    "wrong-shape": (_values(HEAD, lambda a: a[..., :1] if a.ndim else a), "has shape"),
    "huge-norm": (_values(HEAD, lambda a: a * 1e3), "norm"),
    "as-configrecord": (_replace(HEAD, ConfigRecord({"x": 1})), "is a ConfigRecord"),
    "header-vs-payload": (_arrays(HEAD, _header_disagrees), "payload"),
}


@pytest.mark.parametrize("attack", list(HEAD_ATTACKS))
def test_a_bad_head_is_left_out_of_the_average(tiny, caplog, attack):
    tamper, problem = HEAD_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(tiny, P.QUERY_HEAD, tamper)
    warning = next(r.getMessage() for r in caplog.records if "sent bad" in r.getMessage())
    assert "Client 0 (node 1000) sent bad head" in warning
    assert problem in warning and P.QUERY_HEAD in warning
    assert out.rows[0]["dropped-client-steps"] == 1
    # The only head was refused: the aggregated head is the one before the epoch.
    assert_identical(out.head_before, out.head_after)


def test_the_other_heads_are_averaged_without_the_bad_one(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        out = run_with(
            tiny, P.QUERY_HEAD, _values(P.head_key(1), lambda a: a * np.nan), nodes=3, bad_node=1001
        )
    assert "Client 1 (node 1001) sent bad head" in caplog.text
    assert all(torch.isfinite(v).all() for v in out.head_after.values())
    assert any(not torch.equal(out.head_after[k], v) for k, v in out.head_before.items())


# ------------------------------------------------------------------ discovery and identity
def _discover(tiny, tamper_info: Callable[[int, RecordDict], None], nodes: int = 2, **overrides):
    """Run discovery only (MPSL.start up to the roster) with ``tamper_info`` on query.info."""
    cfg = tiny(dirichlet_alpha=1.0, **overrides)
    grid = LocalGrid(client_app, nodes, cfg.to_mapping())

    def reply_fault(node_id: int, reply: Message) -> Message:
        if reply.has_content() and reply.metadata.message_type == D.QUERY_INFO:
            tamper_info(node_id, reply.content)
        return reply

    grid.reply_fault = reply_fault
    t0 = time.monotonic()
    clients = discover_clients(grid, Exchange(grid), cfg)
    return clients, time.monotonic() - t0


def _info_of(node: int, **changes: object) -> Callable[[int, RecordDict], None]:
    def tamper(node_id: int, content: RecordDict) -> None:
        if node_id == node:
            values = dict(content[D.INFO].items())  # type: ignore[union-attr]
            values.update({k.replace("_", "-"): v for k, v in changes.items()})
            content[D.INFO] = ConfigRecord(values)  # type: ignore[arg-type]

    return tamper


INFO_ATTACKS = {
    # 1. garbage
    "garbage": (_info_of(1001, clients="zzz"), "'clients'"),
    "as-metricrecord": (
        lambda n, c: c.__setitem__(D.INFO, MetricRecord({"x": 1.0})) if n == 1001 else None,
        "is a MetricRecord",
    ),
    "lengths-disagree": (_info_of(1001, num_examples=[1, 2, 3]), "num-examples"),
    # 5. a partition larger than max-partition-size
    "huge-partition": (_info_of(1001, num_examples=[10**6]), "max-partition-size"),
}


@pytest.mark.parametrize("attack", list(INFO_ATTACKS))
def test_a_bad_info_reply_refuses_the_node_and_discovery_goes_on(tiny, caplog, attack):
    tamper, problem = INFO_ATTACKS[attack]
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        clients, _ = _discover(tiny, tamper, node_wait_timeout=1.0)
    warning = next(r.getMessage() for r in caplog.records if "query.info" in r.getMessage())
    assert "Node 1001" in warning and "refused" in warning and problem in warning
    assert list(clients) == [0] and clients[0].node_id == 1000


def test_a_node_claiming_many_clients_does_not_stall_discovery(tiny):
    clients, took = _discover(tiny, _info_of(1001, num_clients=1000), node_wait_timeout=60.0)
    assert sorted(clients) == [0, 1]
    assert took < 10  # not the 60 s node-wait-timeout


def test_a_second_claimant_of_a_client_is_refused_at_discovery(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        clients, _ = _discover(tiny, _info_of(1001, clients=[0]), node_wait_timeout=1.0)
    assert clients[0].node_id == 1000
    assert "Node 1001 claims client 0, which node 1000 already serves" in caplog.text


def test_rejoin_moves_a_client_only_after_its_old_node_is_gone(tiny, caplog):
    cfg = tiny(dirichlet_alpha=1.0)
    grid = LocalGrid(client_app, 3, cfg.to_mapping())
    events: dict[str, int] = {}

    def fault(node_id: int, msg: Message):
        if msg.metadata.group_id == "e0s1" and "impostor" not in events:
            # A new node claims client 1 while node 1001 still serves it.
            events["impostor"] = grid.restart(1001)
        return msg

    mpsl, rows = _start_with_fault(cfg, grid, fault, caplog)
    impostor = events["impostor"]
    assert f"Node {impostor} claims client 1, which node 1001 still serves (online)" in caplog.text
    assert mpsl.clients[1].node_id == 1001
    assert rows[0]["samples-trained"] == 96


def test_a_silent_node_that_is_still_listed_gives_its_client_to_its_replacement(tiny, caplog):
    """A SuperNode killed in deployment stays on the node list until its heartbeat expires:
    once the server has given up on it (a leg timed out), its restarted replacement may
    take its client over; while it still answers it may not (the test above)."""
    cfg = tiny(dirichlet_alpha=1.0, epochs=2, step_timeout=0.3)
    grid = LocalGrid(client_app, 3, cfg.to_mapping())
    events: dict[str, int] = {}

    def fault(node_id: int, msg: Message) -> Message | None:
        if msg.metadata.group_id == "e0s2" and "restarted" not in events:
            events["restarted"] = grid.restart(1001)  # 1001 stays listed, silent
        if node_id == 1001 and msg.metadata.group_id != "info":
            return None  # silent from the first step on
        return msg

    mpsl, rows = _start_with_fault(cfg, grid, fault, caplog)
    new = events["restarted"]
    assert 1001 in grid.get_node_ids()
    assert f"Client 1 rejoined on node {new} (was node 1001)" in caplog.text
    assert mpsl.clients[1].node_id == new
    assert rows[1]["samples-trained"] == 96


# ------------------------------------------------------------------ 7. runs that trained nothing
def _summary(output_dir: Path) -> dict:
    (path,) = output_dir.glob("*/summary.json")
    return json.loads(path.read_text())


def test_an_epoch_that_trained_nothing_fails_the_run(tiny, tmp_path):
    cfg = tiny(synthetic_train_size=16, batch_size=16, output_dir=str(tmp_path / "runs"))
    grid = LocalGrid(client_app, 1, cfg.to_mapping())

    def poison(node_id: int, reply: Message) -> Message:
        if reply.has_content() and P.ACT in reply.content:
            _values(P.ACT, lambda a: a * np.nan)(reply.content)
        return reply

    grid.reply_fault = poison
    with pytest.raises(RuntimeError, match="Epoch 1 trained no sample"):
        run_experiment(cfg, grid)
    assert _summary(tmp_path / "runs")["status"] == "failed"


def test_a_non_finite_server_model_fails_the_run(tiny, tmp_path, monkeypatch):
    step = SplitServer._step

    def overflowing_step(self, present):
        cut = step(self, present)
        next(self.model.parameters()).data.fill_(float("inf"))  # as an overflow would
        return cut

    monkeypatch.setattr(SplitServer, "_step", overflowing_step)
    cfg = tiny(output_dir=str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match="non-finite"):
        run_experiment(cfg, LocalGrid(client_app, 2, cfg.to_mapping()))
    assert _summary(tmp_path / "runs")["status"] == "failed"


# ------------------------------------------------------------------ 5b. the node-key registry
def _registry(tmp_path: Path, clients_of: dict[int, list[int]]) -> str:
    """A node registry as mpsl-deploy writes it: node id -> the clients it may serve."""
    path = tmp_path / "node-registry.json"
    NodeRegistry(
        {n: RegisteredNode(n, tuple(c), public_key=f"key-{n}") for n, c in clients_of.items()}
    ).write(path)
    return str(path)


def test_with_a_registry_a_first_claimant_not_registered_for_the_client_is_refused(
    tiny, tmp_path, caplog
):
    """Without a registry node 1000 (asked first) would take client 1 from node 1001."""
    registry = _registry(tmp_path, {1000: [0], 1001: [1]})
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        clients, _ = _discover(
            tiny, _info_of(1000, clients=[1]), node_wait_timeout=1.0, node_registry=registry
        )
    assert clients[1].node_id == 1001 and 0 not in clients
    assert "Node 1000 claims client 1, which the node registry gives to node 1001" in caplog.text


def test_with_a_registry_a_node_it_does_not_list_is_refused_at_discovery(tiny, tmp_path, caplog):
    registry = _registry(tmp_path, {1000: [0]})  # node 1001 was never registered
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        clients, _ = _discover(
            tiny, lambda n, c: None, node_wait_timeout=1.0, node_registry=registry
        )
    assert list(clients) == [0] and clients[0].node_id == 1000
    assert "Node 1001 claims client 1, which the node registry gives to no node" in caplog.text


def test_with_a_registry_rejoin_goes_only_to_the_registered_node(tiny, tmp_path, caplog):
    """Client 1's node dies; a new, unregistered node claiming client 1 is refused even
    though the old node is gone (without a registry it would take client 1 over)."""
    cfg = tiny(dirichlet_alpha=1.0, epochs=2, step_timeout=0.3)
    grid = LocalGrid(client_app, 3, cfg.to_mapping())
    registry = _registry(tmp_path, {1000: [0], 1001: [1], 1002: [2]})
    cfg = cfg.replace(node_registry=registry)
    events: dict[str, int] = {}

    def fault(node_id: int, msg: Message) -> Message | None:
        if msg.metadata.group_id == "e0s1" and "impostor" not in events:
            grid.kill(1001)
            events["impostor"] = grid.restart(1001)  # a new node id, not in the registry
        return msg

    mpsl, _ = _start_with_fault(cfg, grid, fault, caplog)
    impostor = events["impostor"]
    assert (
        f"Node {impostor} claims client 1, which the node registry gives to node 1001"
        in caplog.text
    )
    assert mpsl.clients[1].node_id == 1001
    assert f"rejoined on node {impostor}" not in caplog.text


def test_a_node_registry_that_cannot_be_believed_fails_in_one_line(tiny, tmp_path):
    from mpsl_flwr.config import ConfigError
    from mpsl_flwr.node_registry import RegistryError

    with pytest.raises(ConfigError, match="'node-registry' must be an absolute path"):
        tiny(node_registry="node-registry.json")
    with pytest.raises(RegistryError, match="client 0 is listed for nodes 1 and 2"):
        NodeRegistry({1: RegisteredNode(1, (0,)), 2: RegisteredNode(2, (0,))})
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [{"node-id": "x"}]}')
    with pytest.raises(RegistryError, match="is malformed"):
        NodeRegistry.load(bad)
    with pytest.raises(RegistryError, match="Cannot read"):
        NodeRegistry.load(tmp_path / "missing.json")


# ------------------------------------------------------------------ 1. checkpointed client state
STATE_HEAD, STATE_OPTIM = P.client_state_key(0, "head"), P.client_state_key(0, "optim")
STATE_ATTACKS = {
    "head-nan": (_values(STATE_HEAD, lambda a: a * np.nan), "NaN or Inf"),
    "head-wrong-shape": (_values(STATE_HEAD, lambda a: a[..., :1] if a.ndim else a), "shape"),
    "head-as-configrecord": (_replace(STATE_HEAD, ConfigRecord({"x": 1})), "is a ConfigRecord"),
    "optim-wrong-shape": (_values(STATE_OPTIM, lambda a: np.zeros(7, np.float32)), "shape"),
    "optim-unknown-entry": (
        lambda c: c[STATE_OPTIM].__setitem__("999.exp_avg", Array(np.zeros(3, np.float32))),
        "999.exp_avg",
    ),
    "optim-header-vs-payload": (_arrays(STATE_OPTIM, _header_disagrees), "payload"),
    "cfg-not-text": (
        _replace(P.client_state_key(0, "optim.cfg"), ConfigRecord({"param-groups": 1})),
        "optim.cfg",
    ),
}


@pytest.mark.parametrize("attack", list(STATE_ATTACKS))
def test_a_bad_client_state_is_left_out_of_the_checkpoint(tiny, caplog, attack):
    tamper, problem = STATE_ATTACKS[attack]
    out = run_with(tiny, P.QUERY_STATE, tamper)
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        payload = out.mpsl._checkpoint(0)
    warning = next(r.getMessage() for r in caplog.records if "sent bad" in r.getMessage())
    assert "Client 0 (node 1000) sent bad client state" in warning
    assert problem in warning and P.QUERY_STATE in warning
    assert payload["clients"] == {}


def test_a_good_client_state_is_checkpointed_as_sent(tiny, caplog):
    out = run_with(tiny, "none", lambda content: None)
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        payload = out.mpsl._checkpoint(0)
    assert "sent bad" not in caplog.text
    parts = payload["clients"][0]
    assert set(parts) == set(P.CLIENT_STATE_PARTS)
    head = parts["head"]
    assert {k: tuple(v.shape) for k, v in head.items()} == {
        k: tuple(v.shape) for k, v in out.head_after.items()
    }

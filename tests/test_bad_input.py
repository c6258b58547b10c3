"""Bad input from a client is rejected: dropped from the step, server model untouched."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from clients.client_app import app as client_app
from mpsl_flwr import protocol as P
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.split_model import trainable_state
from strategies.mpsl import MPSL


def _tamper(record: ArrayRecord, change) -> ArrayRecord:
    return ArrayRecord({k: Array(change(v.numpy().copy())) for k, v in record.items()})


def _wrong_shape(a):
    return a[:, :-1]


def _wrong_dtype(a):
    return a.astype(np.float64)


def _nan(a):
    a.flat[3] = np.nan
    return a


def _inf(a):
    a.flat[0] = np.inf
    return a


def _huge(a):
    reps = int(np.ceil(2.5e6 / a.nbytes))  # past the 1 MB limit set below
    return np.tile(a, (1, reps) + (1,) * (a.ndim - 2))


def run_one_step_with(tiny, record: str, change, **overrides):
    """One node, one step per epoch (batch >= data); the node's reply is tampered with."""
    cfg = tiny(synthetic_train_size=16, batch_size=16, **overrides)
    mpsl = MPSL(Experiment.from_config(cfg))
    before = {k: v.clone() for k, v in trainable_state(mpsl.server_model).items()}
    grid = LocalGrid(client_app, 1, cfg.to_mapping())

    def reply_fault(node_id, reply):
        if reply.has_content():
            for name in list(reply.content.array_records):
                if name == record:
                    reply.content[name] = _tamper(reply.content[name], change)
        return reply

    grid.reply_fault = reply_fault
    rows = []
    mpsl.start(grid, on_epoch_end=rows.append)
    return before, trainable_state(mpsl.server_model), rows


@pytest.mark.parametrize(
    ("change", "reason", "overrides"),
    [
        (_wrong_shape, "has shape", {}),
        (_wrong_dtype, "has dtype float64", {}),
        (_nan, "NaN or Inf", {}),
        (_inf, "NaN or Inf", {}),
        (_huge, "exceeds max-client-mb", {"max_client_mb": 1.0}),
    ],
)
@pytest.mark.parametrize(("record", "what"), [(P.ACT, "activations"), (P.GRAD, "output gradient")])
def test_bad_arrays_are_rejected_and_leave_the_server_untouched(
    tiny, caplog, change, reason, overrides, record, what
):
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        before, after, rows = run_one_step_with(tiny, record, change, **overrides)
    assert f"Client 0 (node 1000) sent bad {what}" in caplog.text
    assert reason in caplog.text
    # The one step of the epoch, and the one overtime step that retries the client.
    assert rows[0]["dropped-client-steps"] == 2
    assert rows[0]["samples-trained"] == 0
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)


def test_a_good_step_does_change_the_server(tiny):
    before, after, rows = run_one_step_with(tiny, "none", lambda a: a)
    assert rows[0]["dropped-client-steps"] == 0
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_other_clients_still_train_when_one_is_bad(tiny, caplog):
    cfg = tiny(dirichlet_alpha=1.0)
    grid = LocalGrid(client_app, 3, cfg.to_mapping())

    def poison_node_1001(node_id, reply):
        if node_id == 1001 and reply.has_content():
            for name in list(reply.content.array_records):
                if name == P.ACT:
                    reply.content[name] = _tamper(reply.content[name], _nan)
        return reply

    grid.reply_fault = poison_node_1001
    rows = []
    with caplog.at_level(logging.WARNING, logger="mpsl_flwr"):
        MPSL(Experiment.from_config(cfg)).start(grid, on_epoch_end=rows.append)
    assert "Client 1 (node 1001) sent bad activations" in caplog.text
    assert 0 < rows[0]["samples-trained"] < 96

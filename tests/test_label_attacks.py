"""Label inference attacks (issue 12): on a real run, on synthetic gradients, and the tool.

The real runs go over ``LocalGrid`` (real Flower messages to the real ClientApp, in
process), recorded by ``RecordingGrid``; true labels come from the partitions, outside
the protocol.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from clients.client_app import app as client_app
from mpsl_flwr import cli
from mpsl_flwr.config import RunConfig
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.privacy import attacks
from mpsl_flwr.privacy.recording import RecordingGrid, cut_gradients, loss_gradients, stacked
from mpsl_flwr.privacy.truth import LabelOracle, true_labels
from mpsl_flwr.protocol import mpsl as P
from strategies.mpsl import MPSL

NODES = 3
TINY_RUN_CONFIG = " ".join(f"{k}={str(v).lower()}" for k, v in TINY.items())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run twice: over a plain LocalGrid and over a RecordingGrid that
    records every leg of every step of the one epoch."""
    cfg = RunConfig.from_mapping({**TINY, "output-dir": str(tmp_path_factory.mktemp("out"))})
    out = {}
    for recorded in (False, True):
        local = LocalGrid(client_app, NODES, cfg.to_mapping())
        grid = RecordingGrid(local, epochs={0}, steps=1000) if recorded else local
        result = MPSL(Experiment.from_config(cfg)).start(grid)
        out[recorded] = (result, local, grid)
    return cfg, out


def test_gradient_sign_recovers_every_label_of_a_real_run(runs):
    cfg, out = runs
    _, _, grid = out[True]
    observed = loss_gradients(grid)
    y = true_labels(LabelOracle(cfg.data, NODES, cfg.seed), observed)
    assert y.size == cfg.synthetic_train_size  # one epoch: every training sample once
    predicted = attacks.gradient_sign(stacked(observed))
    assert attacks.recovery_rate(predicted, y) >= 0.99
    assert attacks.recovery_rate(predicted, y) == 1.0  # exact without a defence
    assert attacks.chance_rate(y) < 0.99


def test_recording_adds_no_message_and_changes_no_weight(runs):
    _, out = runs
    (plain, plain_grid, _), (recorded, recorded_grid, grid) = out[False], out[True]
    a, b = plain.arrays.to_torch_state_dict(), recorded.arrays.to_torch_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    types = [m.metadata.message_type for m in plain_grid.delivered]
    assert types == [m.metadata.message_type for m in recorded_grid.delivered]
    assert len(plain_grid.pulled) == len(recorded_grid.pulled)
    # What it kept: only the steps' legs, and the cut-layer gradients it sent.
    assert grid.received and {m.message_type for m in grid.received} <= {
        P.FORWARD,
        P.LOSS,
        P.BACKWARD,
    }
    assert {m.epoch for m in grid.received} == {0}
    assert cut_gradients(grid)


def test_recording_keeps_only_the_chosen_epochs_and_first_steps(runs):
    cfg, out = runs
    _, _, grid = out[True]
    two = [m for m in grid.received if m.step < 2]
    cfg2 = cfg.replace(epochs=2)
    local = LocalGrid(client_app, NODES, cfg2.to_mapping())
    narrow = RecordingGrid(local, epochs={1}, steps=2, message_types=[P.LOSS])
    MPSL(Experiment.from_config(cfg2)).start(narrow)
    assert {(m.epoch, m.message_type) for m in narrow.received} == {(1, P.LOSS)}
    assert {m.step for m in narrow.received} == {0, 1}
    assert len(narrow.received) == len([m for m in two if m.message_type == P.LOSS])


# ------------------------------------------------------------------ synthetic gradients
def _tail_gradients(n=256, d=24, c=6, b=8, seed=0):
    rng = np.random.default_rng(seed)
    W, bias, e = rng.normal(size=(c, d)), rng.normal(size=c), rng.normal(size=(n, d))
    y = rng.integers(0, c, size=n)
    z = e @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = (p - np.eye(c)[y]) @ W / b
    return g, W, bias, e, y, b


def test_known_tail_inversion_is_exact_on_noiseless_gradients():
    g, W, bias, e, y, b = _tail_gradients()
    assert attacks.recovery_rate(attacks.known_tail_inversion(g, W, bias, e, b), y) == 1.0
    # Per-sample batch sizes (clients with different b_n) work the same.
    sizes = np.full(len(y), b, dtype=float)
    assert attacks.recovery_rate(attacks.known_tail_inversion(g, W, bias, e, sizes), y) == 1.0


def test_known_tail_inversion_degrades_gracefully_with_noise():
    g, W, bias, e, y, b = _tail_gradients(n=2000)
    scale = np.linalg.norm(g, axis=1).mean() / np.sqrt(g.shape[1])  # per-entry RMS of g
    rng = np.random.default_rng(1)
    rates = []
    for sigma in (0.1, 1.0, 10.0):
        noisy = g + sigma * scale * rng.normal(size=g.shape)
        rates.append(attacks.recovery_rate(attacks.known_tail_inversion(noisy, W, bias, e, b), y))
    assert rates[0] > 0.99
    assert rates[0] >= rates[1] >= rates[2]
    assert rates[2] > attacks.chance_rate(y)  # still better than guessing


def test_clustering_recovers_well_separated_gradients_and_not_noise():
    rng = np.random.default_rng(0)
    c, n, d = 5, 500, 32
    y = rng.integers(0, c, size=n)
    centres = rng.normal(size=(c, d)) * 10
    separated = centres[y] + rng.normal(size=(n, d))
    assert attacks.recovery_rate(attacks.clustering_attack(separated, y, c), y) >= 0.99
    noise = rng.normal(size=(n, d))  # independent of the labels
    rate = attacks.recovery_rate(attacks.clustering_attack(noise, y, c), y)
    assert rate <= attacks.chance_rate(y) + 0.06


def test_scoring_helpers():
    assert attacks.recovery_rate([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert attacks.chance_rate([3, 3, 3, 1]) == 0.75
    assert list(attacks.gradient_sign([[0.1, -0.9, 0.8], [-0.5, 0.2, 0.3]])) == [1, 0]
    with pytest.raises(ValueError, match="4 predictions for 3 labels"):
        attacks.recovery_rate([0, 1, 2, 2], [0, 1, 1])


# ------------------------------------------------------------------ the tool
def test_label_attack_tool_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "attack"
    argv = ["--nodes", str(NODES), "--steps", "2", "--out", str(out)]
    assert cli.label_attack([*argv, "--run-config", TINY_RUN_CONFIG]) == 0
    report = json.loads((out / "label-attack.json").read_text())
    assert report["run"]["clients"] == NODES and report["run"]["steps-attacked"] == 2
    rows = {(r["attack"], r["target"].split()[0]): r for r in report["attacks"]}
    sign = rows[("gradient-sign", "train.loss")]
    assert sign["recovery_rate"] == 1.0 and sign["samples"] > 0 and sign["steps"] == [1, 2]
    assert {"epoch", "chance_rate", "samples", "recovery_rate"} <= set(sign)
    tail = rows[("known-tail-inversion", "train.loss")]
    assert tail["recovery_rate"] is None and "tail is on the server" in tail["note"]
    assert ("clustering", "cut-layer") in rows
    table = (out / "label-attack.md").read_text()
    assert "| gradient-sign |" in table and "not applicable (the tail is on the server)" in table
    assert "| gradient-sign |" in capsys.readouterr().out


def test_label_attack_refuses_retrieval(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.label_attack(["--out", str(tmp_path), "--run-config", "dataset='synthetic-retrieval'"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no labels to infer" in err
    assert not (tmp_path / "label-attack.json").exists()

"""Bytes per client per epoch, measured on the real messages, against the analytic size.

MPSL moves, per sample a client trains, its cut-layer activations up and their gradients
down (tokens x width x dtype size), plus its head once each way per epoch (down: once per
node, which loads it for all its clients). With several clients per node every leg packs
them into one array per stream, which must cost no more than the analytic size either. FedAvg moves
the trainable arrays once each way per round. Everything else in the messages (configs,
metrics, record framing) must stay under 2%.
"""

from __future__ import annotations

import pytest

from clients.client_app import app as client_app
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.split_model import count_trainable
from strategies.fedavg import FederatedAveraging
from strategies.mpsl import MPSL

NODES = 3


def mpsl_rows(cfg):
    mpsl = MPSL(Experiment.from_config(cfg))
    rows = []
    mpsl.start(LocalGrid(client_app, NODES, cfg.to_mapping()), on_epoch_end=rows.append)
    return mpsl.exp, mpsl.head, rows


def analytic_mpsl_mb(head, row, dtype_bytes: int, per_node: int = 1, way: str = "up") -> float:
    """MB per client: its cut-layer rows, and its head (down: a node's one copy, shared)."""
    per_sample = sum(head.stream_lengths().values()) * head.width * dtype_bytes
    clients = NODES * per_node
    cut_layer = row["samples-trained"] * per_sample / clients
    heads = count_trainable(head) * 4 / (per_node if way == "down" else 1)
    return (cut_layer + heads) / 1e6


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_mpsl_traffic_matches_the_analytic_size(tiny, fusion):
    cfg = tiny(fusion=fusion, dirichlet_alpha=1000.0, checkpoint_every=0, encoder_depth=1)
    _, head, rows = mpsl_rows(cfg)
    expected = analytic_mpsl_mb(head, rows[0], 4)
    assert rows[0]["mb-up-per-client"] == pytest.approx(expected, rel=0.02)
    assert rows[0]["mb-down-per-client"] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_activations_halve_the_cut_layer_traffic(tiny, dtype):
    base = dict(
        dirichlet_alpha=1000.0, checkpoint_every=0, encoder_depth=1, synthetic_train_size=192
    )
    _, head, rows32 = mpsl_rows(tiny(**base))
    _, _, rows16 = mpsl_rows(tiny(**base, activation_dtype=dtype))
    head_mb = count_trainable(head) * 4 / 1e6
    for way in ("up", "down"):
        cut32 = rows32[0][f"mb-{way}-per-client"] - head_mb
        cut16 = rows16[0][f"mb-{way}-per-client"] - head_mb
        assert cut16 / cut32 == pytest.approx(0.5, rel=0.02), way
        assert rows16[0][f"mb-{way}-per-client"] == pytest.approx(
            analytic_mpsl_mb(head, rows16[0], 2), rel=0.02
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_traffic_matches_the_analytic_size(tiny, dtype):
    """Four clients per node, each leg one array per stream for all four."""
    cfg = tiny(
        clients_per_node=4,
        dirichlet_alpha=1000.0,
        checkpoint_every=0,
        encoder_depth=1,
        synthetic_train_size=192,
        batch_size=48,
        activation_dtype=dtype,
    )
    _, head, rows = mpsl_rows(cfg)
    size = 4 if dtype == "float32" else 2
    for way in ("up", "down"):
        assert rows[0][f"mb-{way}-per-client"] == pytest.approx(
            analytic_mpsl_mb(head, rows[0], size, per_node=4, way=way), rel=0.02
        ), way


def test_fedavg_traffic_is_the_trainable_arrays_once_each_way(tiny):
    cfg = tiny(strategy="fedavg", encoder_depth=2, finetune_blocks=1)
    exp = Experiment.from_config(cfg)
    runner = FederatedAveraging(exp)
    rows = []
    runner.start(LocalGrid(client_app, NODES, cfg.to_mapping()), None, rows.append)
    head, server = exp.initial_model()
    expected = (count_trainable(head) + count_trainable(server)) * 4 / 1e6
    assert rows[0]["mb-up-per-client"] == pytest.approx(expected, rel=0.02)
    assert rows[0]["mb-down-per-client"] == pytest.approx(expected, rel=0.02)


def test_sweep_extrapolation_matches_a_real_epoch(tiny):
    """The Figure-3 sweep's scaling from two short probes predicts a longer real epoch."""
    from mpsl_flwr.tools.traffic_sweep import measure_size, probe_config

    base = tiny(checkpoint_every=0)
    real = mpsl_rows(probe_config(base, "tiny", "mpsl", NODES, 5))[2][0]
    predicted = measure_size(base, "tiny", "mpsl", NODES, real["samples-trained"] / NODES)
    assert predicted[0] == pytest.approx(real["mb-up-per-client"], rel=0.01)
    assert predicted[1] == pytest.approx(real["mb-down-per-client"], rel=0.01)


def test_cost_table_rows_and_ratios(tiny):
    from mpsl_flwr.tools.cost_table import cost_rows, ratio_lines

    rows = cost_rows(tiny(encoder_depth=2), ["tiny"], ["mpsl", "fedavg", "lw-fedmml"], 4)
    assert [r["strategy"] for r in rows] == ["mpsl", "fedavg", "lw-fedmml"]
    mpsl, fedavg, _ = rows
    assert mpsl["client-gflops-fwd-bwd"] < fedavg["client-gflops-fwd-bwd"]
    assert mpsl["server-gflops-fwd-bwd"] > 0 and fedavg["server-params"] == 0
    assert "FedAvg / MPSL client GFLOPs" in ratio_lines(rows)[0]

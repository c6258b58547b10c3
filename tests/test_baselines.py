"""FedAvg, FedCLIP and centralized on the MPSL model, over real Flower messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.client_app import app as client_app
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.split_model import trainable_state
from mpsl_flwr.registry import strategy_spec
from strategies import load_runner
from strategies.fedavg import FederatedAveraging
from strategies.fedclip import FedCLIPTraining


def run(cfg, runner_cls, num_nodes=2):
    grid = LocalGrid(client_app, num_nodes, cfg.to_mapping())
    runner = runner_cls(Experiment.from_config(cfg))
    rows = []
    result = runner.start(
        grid, lambda e, h, s: Experiment.from_config(cfg).evaluate(h, s), rows.append
    )
    return runner, result, rows, grid


def test_fedavg_aggregate_is_the_sample_weighted_mean(tiny):
    cfg = tiny(strategy="fedavg", dirichlet_alpha=0.5)
    _, result, rows, grid = run(cfg, FederatedAveraging)
    train_replies = [r for r in grid.pulled if r.metadata.message_type == "train"]
    assert len(train_replies) == 2
    weights = [int(r.content["metrics"]["num-examples"]) for r in train_replies]
    assert sum(weights) == 96 and weights[0] != weights[1]
    by_hand = {}
    for reply, w in zip(train_replies, weights, strict=True):
        for key, arr in reply.content["arrays"].items():
            by_hand[key] = by_hand.get(key, 0) + arr.numpy() * (w / sum(weights))
    final = result.arrays
    assert set(final) == set(by_hand)
    for key, value in by_hand.items():
        np.testing.assert_allclose(final[key].numpy(), value, rtol=0, atol=1e-6, err_msg=key)
    assert rows[0]["samples-trained"] == 96


def test_fedavg_exchanges_exactly_what_mpsl_trains(tiny):
    cfg = tiny(strategy="fedavg", encoder_depth=3, finetune_blocks=1)
    _, _, rows, grid = run(cfg, FederatedAveraging)
    head, server = Experiment.from_config(tiny(encoder_depth=3, finetune_blocks=1)).initial_model()
    mpsl_trains = {f"head.{k}" for k in trainable_state(head)} | {
        f"server.{k}" for k in trainable_state(server)
    }
    for msg in grid.delivered:
        if msg.metadata.message_type == "train":
            assert set(msg.content["arrays"]) == mpsl_trains
    assert not any(k.startswith("server.encoder.blocks.0.") for k in mpsl_trains)
    assert any(k.startswith("server.encoder.blocks.2.") for k in mpsl_trains)
    assert rows[0]["mb-down-per-client"] > 0


@pytest.mark.parametrize("sharing", ["per-modality", "shared"])
def test_fedclip_messages_carry_only_adapter_and_head_arrays(tiny, sharing):
    cfg = tiny(strategy="fedclip", fusion="late", fedclip_adapter=sharing)
    runner, _, rows, grid = run(cfg, FedCLIPTraining)
    sent = [m for m in grid.delivered if m.metadata.message_type == "train"]
    received = [r for r in grid.pulled if r.metadata.message_type == "train"]
    assert sent and received
    for msg in sent + received:
        keys = set(msg.content["arrays"])
        assert keys, "no arrays"
        assert all(k.startswith(("server.adapters.", "server.tail.")) for k in keys), keys
    adapters = {k.split(".")[2] for k in sent[0].content["arrays"] if ".adapters." in k}
    assert adapters == ({"image", "text"} if sharing == "per-modality" else {"shared"})
    # The frozen encoder did not move.
    fresh = Experiment.from_config(cfg).initial_model()[1]
    torch.testing.assert_close(
        runner.server_model.encoder.blocks[0].attn.qkv.weight,
        fresh.encoder.blocks[0].attn.qkv.weight,
    )
    trained = sum(p.numel() for p in runner.server_model.parameters() if p.requires_grad)
    assert rows[0]["mb-up-per-client"] == pytest.approx(trained * 4 / 1e6, rel=0.02)


def test_fedclip_can_also_train_and_send_the_tokenizers(tiny):
    cfg = tiny(strategy="fedclip", fedclip_train_tokenizers=True)
    _, _, _, grid = run(cfg, FedCLIPTraining)
    keys = set(
        next(m for m in grid.delivered if m.metadata.message_type == "train").content["arrays"]
    )
    assert any(k.startswith("head.tokenizers.image.") for k in keys)
    assert not any(k.startswith("server.encoder.") for k in keys)


@pytest.mark.parametrize("name", ["fedavg", "fedclip"])
def test_retrieval_trains_contrastively_in_the_fedavg_family(tiny, name):
    cfg = tiny(strategy=name, dataset="synthetic-retrieval")
    _, _, rows, _ = run(cfg, load_runner(strategy_spec(name)))
    assert {"test-i2t-r1", "test-t2i-r10", "test-rsum"} <= set(rows[0])
    assert np.isfinite(rows[0]["train-loss"])

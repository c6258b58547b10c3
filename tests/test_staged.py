"""LW-FedMML and Prog-FedMML: the stage schedule, what travels, what stays frozen."""

from __future__ import annotations

import copy

import pytest
import torch

from clients.client_app import app as client_app
from mpsl_flwr.costs import measure
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.split_model import build_model
from mpsl_flwr.staging import FROZEN, StageSchedule
from strategies.staged import StagedTraining


def run(cfg, nodes=2):
    grid = LocalGrid(client_app, nodes, cfg.to_mapping())
    runner = StagedTraining(Experiment.from_config(cfg))
    snapshots = [copy.deepcopy(runner.model.state_dict())]
    rows = []

    def on_epoch_end(row):
        rows.append(row)
        snapshots.append(copy.deepcopy(runner.model.state_dict()))

    runner.start(grid, None, on_epoch_end)
    return runner, grid, rows, snapshots


def blocks_of(keys):
    return {int(k.split(".")[3]) for k in keys if k.startswith("server.encoder.blocks.")}


def train_messages(grid, server_round):
    return [
        m
        for m in grid.delivered
        if m.metadata.message_type == "train"
        and int(m.content["config"]["server-round"]) == server_round
    ]


def test_schedule_splits_blocks_and_rounds(tiny):
    lw = StageSchedule.from_config(tiny(strategy="lw-fedmml", encoder_depth=5, epochs=7))
    assert (lw.num_stages, lw.rounds_per_stage) == (3, 2)
    assert [lw.stage_of(r) for r in range(1, 8)] == [0, 0, 1, 1, 2, 2, 2]
    assert [lw.run_depth(s) for s in range(3)] == [2, 4, 5]
    names = [
        n
        for n, _ in build_model(
            Experiment.from_config(tiny(encoder_depth=5, final_norm=True)).spec
        ).named_parameters()
    ]
    trained = {n for n in names if lw.trains(n, 1)}
    assert blocks_of(trained) == {2, 3}
    assert not any(n.startswith("head.") for n in trained)
    assert {"server.encoder.norm.weight", "server.tail.fc.weight"} <= trained
    frozen = {n for n in names if lw.frozen_trained(n, 1)}
    assert blocks_of(frozen) == {0, 1} and any(n.startswith("head.") for n in frozen)
    prog = StageSchedule.from_config(tiny(strategy="prog-fedmml", encoder_depth=5, epochs=7))
    assert blocks_of({n for n in names if prog.trains(n, 1)}) == {0, 1, 2, 3}
    assert not any(prog.frozen_trained(n, 2) for n in names)


@pytest.mark.parametrize("strategy", ["lw-fedmml", "prog-fedmml"])
def test_stage_switch_changes_which_arrays_travel(tiny, strategy):
    cfg = tiny(strategy=strategy, encoder_depth=4, stage_blocks=2, epochs=2)
    _, grid, rows, _ = run(cfg)
    first, second = train_messages(grid, 1), train_messages(grid, 2)
    assert len(first) == len(second) == 2
    sent1, sent2 = set(first[0].content["arrays"]), set(second[0].content["arrays"])
    assert blocks_of(sent1) == {0, 1} and any(k.startswith("head.") for k in sent1)
    assert all(FROZEN not in m.content for m in first)
    replies2 = [r for r in grid.pulled if r.metadata.message_type == "train"][2:]
    assert all(set(r.content["arrays"]) == sent2 for r in replies2)
    if strategy == "lw-fedmml":
        assert blocks_of(sent2) == {2, 3}
        assert not any(k.startswith("head.") for k in sent2)
        for msg in second:  # the frozen stage-1 blocks travel once, to every node
            assert blocks_of(msg.content[FROZEN]) == {0, 1}
        assert rows[1]["mb-up-per-client"] < rows[0]["mb-up-per-client"]
    else:
        assert blocks_of(sent2) == {0, 1, 2, 3} and sent1 < sent2
        assert all(FROZEN not in m.content for m in second)


def test_frozen_blocks_do_not_change_and_later_blocks_wait(tiny):
    cfg = tiny(strategy="lw-fedmml", encoder_depth=4, stage_blocks=2, epochs=3, stage_rounds=1)
    _, grid, _, snaps = run(cfg)
    # Round 3 is the second round of stage 2: nodes kept the frozen blocks from round 2.
    assert all(FROZEN not in m.content for m in train_messages(grid, 3))

    def same(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys
        return all(torch.equal(a[k], b[k]) for k in keys)

    initial, after_stage1, end = snaps[0], snaps[1], snaps[3]
    for prefix in ("server.encoder.blocks.2.", "server.encoder.blocks.3."):
        assert same(initial, after_stage1, prefix)  # not trained (not even run) in stage 1
        assert not same(after_stage1, end, prefix)  # trained in stage 2
    for prefix in ("server.encoder.blocks.0.", "server.encoder.blocks.1.", "head.tokenizers."):
        assert not same(initial, after_stage1, prefix)  # trained in stage 1
        assert same(after_stage1, end, prefix)  # frozen through stage 2


def test_blocks_past_the_stage_are_not_run(tiny):
    cfg = tiny(strategy="lw-fedmml", encoder_depth=4, stage_blocks=1)
    exp = Experiment.from_config(cfg)
    model = build_model(exp.spec)
    StageSchedule.from_config(cfg).apply(model, 1)
    ran = []
    for i, block in enumerate(model.server.encoder.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    model(exp.test_set().batch(torch.arange(2).numpy()))
    assert sorted(set(ran)) == [0, 1]


def test_layerwise_costs_less_than_end_to_end(tiny):
    fedavg = measure(Experiment.from_config(tiny(strategy="fedavg", encoder_depth=4)), 8)
    lw = [
        measure(Experiment.from_config(tiny(strategy="lw-fedmml", encoder_depth=4)), 8, stage=s)
        for s in range(2)
    ]
    prog_last = measure(
        Experiment.from_config(tiny(strategy="prog-fedmml", encoder_depth=4)), 8, stage=1
    )
    for stage in lw:
        assert stage.client_gflops_fwd_bwd < fedavg.client_gflops_fwd_bwd
        assert stage.client_train_mb < fedavg.client_train_mb
        assert stage.client_params < fedavg.client_params
    assert lw[0].client_gflops_fwd < lw[1].client_gflops_fwd  # stage 2 runs 4 blocks
    # The last progressive stage is end-to-end training.
    assert prog_last.client_gflops_fwd_bwd == pytest.approx(fedavg.client_gflops_fwd_bwd)
    assert prog_last.client_params == fedavg.client_params


def test_a_run_too_short_for_the_last_stage_is_warned_about_once_on_the_server(tiny):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mpsl_flwr")
    logger.addHandler(handler)
    try:
        cfg = tiny(strategy="lw-fedmml", encoder_depth=4, stage_blocks=1, epochs=2)
        StagedTraining(Experiment.from_config(cfg))
        warned = [r.getMessage() for r in records if "reach only stage" in r.getMessage()]
        assert warned == [
            "2 epochs reach only stage 2 of 4 (stage-rounds=1): raise 'epochs' "
            "or 'stage-blocks' to train the whole encoder."
        ]
        StageSchedule.from_config(cfg)  # what clients and cost tables build: no warning
        assert len([r for r in records if "reach only stage" in r.getMessage()]) == 1
    finally:
        logger.removeHandler(handler)

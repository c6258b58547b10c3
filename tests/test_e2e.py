"""End to end: a real ``flwr run`` simulation (Ray backend) on a private SuperLink."""

from __future__ import annotations

import json
import re

import hostile_clientapp
import pytest

from mpsl_flwr.config import ConfigError
from mpsl_flwr.ops.launch import flwr_run, local_superlink
from mpsl_flwr.project import PROJECT_DIR

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    with local_superlink(tmp_path_factory.mktemp("flwr-home")) as superlink:
        yield superlink


def test_mpsl_simulation_completes_and_writes_results(link, tmp_path):
    outcome = flwr_run(
        link,
        {
            "strategy": "mpsl",
            "encoder-depth": 2,
            "synthetic-train-size": 90,
            "synthetic-test-size": 30,
            "batch-size": 30,
            "epochs": 2,
            "progress": False,
            "output-dir": str(tmp_path),
        },
        num_supernodes=3,
        timeout=600,
        stream=False,
    )
    assert outcome.status == "finished:completed", outcome
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["strategy"] == "mpsl" and summary["num-clients"] == 3
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    row = summary["history"][-1]
    for key in ("train-loss", "test-accuracy", "mb-up-per-client", "mb-down-per-client"):
        assert key in row
    assert row["samples-trained"] == 90
    assert summary["client-trainable-params"] < summary["server-trainable-params"]
    assert 0 < summary["final"]["test-accuracy"] <= 1
    assert (outcome.run_dir / "history.csv").exists()
    assert (outcome.run_dir / "history.png").exists()


def two_node_run(link, tmp_path, **overrides):
    """Two epochs of a tiny model on 60 samples over 2 virtual SuperNodes."""
    config = {
        "encoder-depth": 2,
        "synthetic-train-size": 60,
        "synthetic-test-size": 30,
        "batch-size": 30,
        "epochs": 2,
        "progress": False,
        "output-dir": str(tmp_path),
        **overrides,
    }
    return flwr_run(link, config, num_supernodes=2, timeout=600, stream=False)


# FedCLIP's server is FedAvg's (FedCLIPTraining subclasses FederatedAveraging) and both
# use clients.fedavg, so one run of it covers FedAvg's path through Ray's virtual clients
# too; each strategy's own logic is tested in process (test_baselines.py, LocalGrid).
@pytest.mark.parametrize("strategy", ["fedclip", "centralized"])
def test_each_kind_of_baseline_completes_under_flwr_run(link, tmp_path, strategy):
    outcome = two_node_run(link, tmp_path, strategy=strategy)
    assert outcome.status == "finished:completed", outcome
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["strategy"] == strategy
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert "test-accuracy" in summary["final"]
    if strategy == "centralized":
        assert summary["client-trainable-params"] == 0
    else:
        assert summary["history"][0]["samples-trained"] == 60
        assert summary["history"][0]["mb-up-per-client"] > 0


def test_a_bad_key_fails_before_anything_starts(link, tmp_path):
    with pytest.raises(ConfigError, match="Unknown run-config key 'no-such-key'"):
        flwr_run(
            link, {"no-such-key": 1, "output-dir": str(tmp_path)}, num_supernodes=2, stream=False
        )


def test_a_staged_strategy_completes_under_flwr_run(link, tmp_path):
    """LW-FedMML, two stages of one block each: the stage switch and the frozen blocks
    sent to every node go through Ray's virtual clients. Prog-FedMML runs the same server
    (strategies/staged.py) and client code on another schedule (test_staged.py)."""
    outcome = two_node_run(link, tmp_path, strategy="lw-fedmml", **{"stage-blocks": 1})
    assert outcome.status == "finished:completed", outcome
    history = json.loads((outcome.run_dir / "summary.json").read_text())["history"]
    assert [row["samples-trained"] for row in history] == [60, 60]
    # The second stage sends one block instead of the head and a block.
    assert history[1]["mb-up-per-client"] < history[0]["mb-up-per-client"]


def test_a_virtual_client_that_kills_its_process_does_not_take_the_others_down(link, tmp_path):
    """Issue 16, item 7: node 1's ClientApp exits its process (``os._exit``) on its first
    ``train.backward``. Only that message is lost (its Ray actor is replaced,
    ``flower_patches.replace_dead_actors``); the step goes on without node 1, the other
    nodes keep training, and so does node 1 from its next message on."""
    app = hostile_clientapp.write_app(PROJECT_DIR, tmp_path / "app", 1, "train.backward")
    config = {
        "encoder-depth": 2,
        "synthetic-train-size": 90,
        "synthetic-test-size": 30,
        "batch-size": 30,
        "epochs": 2,
        "dirichlet-alpha": 1.0,
        "progress": False,
        "output-dir": str(tmp_path / "runs"),
    }
    outcome = flwr_run(link, config, num_supernodes=3, app_dir=app, timeout=300, stream=False)
    (dead,) = [p.name.split("-")[0] for p in (app / "deaths").iterdir()]
    logs = link.flwr("log", str(outcome.run_id), *link.conn_args(), "--show")
    errors = re.findall(
        r"Node (\d+) \([^)]*\) replied to (\S+) of step \S+ with an error \(([^\n]*)", logs
    )
    assert outcome.status == "finished:completed", outcome
    # Without the replacement: 27 error replies, from every node, for the rest of the run.
    assert [(node, leg) for node, leg, _ in errors] == [(dead, "train.backward")], errors
    assert "ActorDiedError" in errors[0][2]
    history = json.loads((outcome.run_dir / "summary.json").read_text())["history"]
    assert [row["dropped-client-steps"] for row in history] == [1, 0]
    # An overtime step makes up node 1's lost step; epoch 2 has nothing to make up.
    assert [row["samples-trained"] for row in history] == [90, 90]


def test_a_failed_mpsl_run_points_at_logs_that_outlive_the_launcher(tmp_path, capsys):
    """``mpsl-run`` (launch.main) on a temporary FLWR_HOME, stopped by its timeout: the
    failure names ``<run-dir>/logs``, which holds the SuperLink's log after the home
    is gone (issue 15, item 16)."""
    from mpsl_flwr.ops import launch

    overrides = {"output-dir": str(tmp_path), "run-name": "cut-short", "progress": False}
    assert launch.main(overrides, nodes=2, timeout=1) == 1
    err = capsys.readouterr().err
    logs = tmp_path / "cut-short" / "logs"
    assert f"see {logs} and the logs above" in err
    assert (logs / "superlink.log").stat().st_size > 0

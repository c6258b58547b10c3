"""Checkpoint and resume: a run killed mid-way and resumed ends with the same weights."""

from __future__ import annotations

import json

import pytest

from clients.client_app import app as client_app
from mpsl_flwr.checkpoint import CHECKPOINT
from mpsl_flwr.config import ConfigError
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.results import HISTORY_JSONL, SUMMARY
from strategies.runner import run_experiment


class SimulatedCrashError(Exception):
    """Stands for the server process dying."""


def _run(cfg, crash_at: str | None = None):
    """The full ServerApp path (recorder, checkpoints) over fresh virtual nodes."""
    grid = LocalGrid(client_app, 3, cfg.to_mapping()) if cfg.strategy == "mpsl" else None
    if crash_at is not None:

        def crash(node_id, msg):
            if msg.metadata.group_id == crash_at:
                raise SimulatedCrashError(crash_at)
            return msg

        grid.fault = crash
    return run_experiment(cfg, grid)


def _final_weights(run_dir):
    import torch

    return torch.load(run_dir / CHECKPOINT, weights_only=True)


@pytest.mark.parametrize("head_sync", ["push", "keep"])
def test_mpsl_killed_mid_epoch_and_resumed_equals_uninterrupted(tiny, head_sync):
    base = {"epochs": 3, "dirichlet_alpha": 1.0, "head_sync": head_sync}
    straight = _run(tiny(run_name="straight", **base))
    with pytest.raises(SimulatedCrashError):
        _run(tiny(run_name="crashed", **base), crash_at="e1s2")  # in epoch 2 of 3
    crashed_dir = straight.parent / "crashed"
    assert json.loads((crashed_dir / SUMMARY).read_text())["status"] == "failed"
    assert _final_weights(crashed_dir)["epoch"] == 1
    resumed = _run(tiny(run_name="crashed", resume=True, **base))
    assert resumed == crashed_dir

    a, b = _final_weights(straight), _final_weights(resumed)
    for part in ("server", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert (a[part][key] == b[part][key]).all(), f"{part}.{key}"
    for cid, parts in a["clients"].items():
        for key, value in parts["head"].items():
            assert (value == b["clients"][cid]["head"][key]).all()
    history = [json.loads(line) for line in (resumed / HISTORY_JSONL).read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    summary = json.loads((resumed / SUMMARY).read_text())
    assert summary["status"] == "completed"
    straight_summary = json.loads((straight / SUMMARY).read_text())
    assert summary["final"] == straight_summary["final"]


def test_centralized_resume_equals_uninterrupted(tiny, monkeypatch):
    base = {"epochs": 3, "strategy": "centralized"}
    straight = _run(tiny(run_name="c-straight", **base))
    calls = {"n": 0}
    import strategies.centralized as central

    original = central.train_epoch

    def dying_train_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SimulatedCrashError("epoch 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(central, "train_epoch", dying_train_epoch)
    with pytest.raises(SimulatedCrashError):
        _run(tiny(run_name="c-crashed", **base))
    monkeypatch.setattr(central, "train_epoch", original)
    resumed = _run(tiny(run_name="c-crashed", resume=True, **base))
    a, b = _final_weights(straight)["model"], _final_weights(resumed)["model"]
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_resume_refuses_a_changed_config_or_a_missing_checkpoint(tiny):
    run_dir = _run(tiny(run_name="r", epochs=1))
    with pytest.raises(ConfigError, match=r"learning-rate \(0.001 -> 0.002\)"):
        _run(tiny(run_name="r", epochs=1, resume=True, learning_rate=2e-3))
    (run_dir / CHECKPOINT).unlink()
    with pytest.raises(ConfigError, match="no checkpoint"):
        _run(tiny(run_name="r", epochs=1, resume=True))
    with pytest.raises(ConfigError, match="needs 'run-name'"):
        tiny(resume=True)

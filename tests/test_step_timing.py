"""Per-step timings of MPSL (issue 14): ``steps.jsonl`` in the run directory, one row
per step with the server's compute, the nodes' reported compute and bytes per leg."""

from __future__ import annotations

import json

import pytest
from flwr.app import MetricRecord, RecordDict

from clients.client_app import app as client_app
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.protocol import compute_time
from mpsl_flwr.results import STEPS_JSONL
from strategies.runner import run_experiment


def test_every_step_is_timed_leg_by_leg(tiny) -> None:
    cfg = tiny(dirichlet_alpha=1000.0, checkpoint_every=0)
    run_dir = run_experiment(cfg, LocalGrid(client_app, 2, cfg.to_mapping()))
    rows = [json.loads(line) for line in (run_dir / STEPS_JSONL).read_text().splitlines()]
    history = json.loads((run_dir / "summary.json").read_text())["history"]
    assert len(rows) == history[0]["steps"] and rows[0]["epoch"] == 1
    assert sum(r["samples"] for r in rows) == history[0]["samples-trained"]
    for row in rows:
        assert row["server-compute-s"] > 0
        assert 0 < row["client-compute-max-s"] <= row["client-compute-sum-s"]
        assert row["transport-s"] == pytest.approx(
            row["wall-s"] - row["server-compute-s"] - row["client-compute-max-s"], abs=1e-5
        )
        legs = {leg["leg"]: leg for leg in row["legs"]}
        assert {"train.loss", "train.backward"} <= set(legs)
        for leg in legs.values():
            assert 1 <= leg["nodes"] <= 2 and leg["bytes-down"] > 0 and leg["bytes-up"] > 0
        assert row["bytes-down"] == sum(leg["bytes-down"] for leg in row["legs"])


@pytest.mark.parametrize("value", [-1.0, float("nan"), 1e9, "1.0"])
def test_an_implausible_compute_time_reads_as_none(value) -> None:
    content = RecordDict({compute_time.RECORD: MetricRecord({compute_time.KEY: 1.0})})
    assert compute_time.read_compute_time(content) == 1.0
    if isinstance(value, float):
        content[compute_time.RECORD] = MetricRecord({compute_time.KEY: value})
    else:
        content[compute_time.RECORD] = MetricRecord({"other": 1.0})
    assert compute_time.read_compute_time(content) is None
    assert compute_time.read_compute_time(RecordDict()) is None

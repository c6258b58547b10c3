"""Dropouts on a real deployment: a SuperNode killed mid-run, then started again.

Three real ``flower-supernode`` processes serve three clients. After the first epoch
one SuperNode is killed (SIGKILL, no goodbye). The step it was in completes with the
other two within ``step-timeout``; the SuperNode is started again (a new node id, an
empty state) and its client rejoins at the next step, picking up its partition where
the server's offsets say it was.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mpsl_flwr.ops.deploy import FAST, DeployOptions, deployment
from mpsl_flwr.ops.superlink import COMPLETED

pytestmark = pytest.mark.e2e

RUN = {
    "epochs": 3,
    "synthetic-train-size": 90,
    "synthetic-test-size": 30,
    "dirichlet-alpha": 1.0,
    "encoder-depth": 2,
    "batch-size": 30,
    "eval-batch-size": 64,
    "progress": False,
    "step-timeout": 8.0,
    "node-wait-timeout": 60.0,
    "run-name": "dropout",
    # No checkpoint legs: the kill must land in a training step (a query.state to the dead
    # node would wait out step-timeout and the node would be back before epoch 2 starts).
    "checkpoint-every": 0,
}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_killed_supernode_is_dropped_and_rejoins(tmp_path: Path) -> None:
    out = tmp_path / "out"
    history = out / "dropout" / "history.jsonl"
    with deployment(DeployOptions(nodes=3, workdir=tmp_path / "deploy", **FAST)) as dep:
        outcome = {}
        runner = threading.Thread(
            target=lambda: outcome.update(
                result=dep.run({**RUN, "output-dir": str(out)}, stream=False, timeout=600)
            )
        )
        runner.start()
        _wait_for(lambda: history.exists() and history.read_text().strip(), 300, "epoch 1")

        victim = dep.supernodes[1]
        victim.required = False
        for proc in (victim.executor, victim.process):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(RUN["step-timeout"] + 4)  # long enough for a step to give up on it
        dep.start_supernode(1, num_partitions=3)

        runner.join(timeout=600)
        result = outcome["result"]
        assert result.status == COMPLETED, dep.superlink.log_tail(40)
        log = dep.flwr("log", str(result.run_id), "--show", *dep.conn_args())

    rows = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["dropped-client-steps"] == 0
    assert sum(r["dropped-client-steps"] for r in rows[1:]) >= 1
    assert "did not answer" in log
    assert "Client 1 rejoined on node" in log
    brief = [(r["epoch"], r["samples-trained"], r["dropped-client-steps"]) for r in rows]
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert rows[-1]["samples-trained"] == 90, (brief, "\n".join(warnings))

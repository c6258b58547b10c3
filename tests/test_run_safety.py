"""Results and checkpoints stay safe: a refused resume changes nothing, run names stay
inside ``output-dir``, one writer per run dir, checkpoints survive corruption and a full
disk. The run dirs here are written by the real recorder and checkpointer without
training (a real resume is in tests/test_checkpoint.py), so each test takes seconds."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clients.client_app import app as client_app
from mpsl_flwr.checkpoint import CHECKPOINT, PREVIOUS, Checkpointer, Checkpointing, rng_state
from mpsl_flwr.config import ConfigError, RunConfig
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.results import SUMMARY, RunRecorder
from strategies.runner import run_experiment


@pytest.fixture
def logs(caplog):
    """``caplog`` that also sees mpsl_flwr's records (its logger does not propagate once a
    run has set up its console output)."""
    logger = logging.getLogger("mpsl_flwr")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def finished_run(cfg: RunConfig, num_clients: int = 2) -> Path:
    """A completed one-epoch run dir: config, history, summary and a checkpoint."""
    recorder = RunRecorder(cfg, num_clients=num_clients)
    recorder.log_epoch(EpochRecord(epoch=1, train_loss=1.0, samples_trained=96))
    Checkpointer(recorder.dir, cfg).save(
        {
            "epoch": 1,
            "rng": rng_state(),
            "history": recorder.history,
            "num-clients": num_clients,
            "clients": {cid: {} for cid in range(num_clients)},
        }
    )
    recorder.finish({"test-accuracy": 0.5})
    return recorder.dir


def resume(cfg: RunConfig, nodes: int = 2) -> Path:
    """``run_experiment`` over ``nodes`` fresh virtual nodes, as the ServerApp runs it."""
    return run_experiment(cfg, LocalGrid(client_app, nodes, cfg.to_mapping()))


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of ``run_dir`` and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"learning_rate": 2e-3}, r"learning-rate \(0.001 -> 0.002\)"),
        ("truncate", "checkpoint.pt"),
        ("delete", "no checkpoint"),
    ],
)
def test_a_refused_resume_changes_nothing_in_the_run_dir(tiny, change, error):
    run_dir = finished_run(tiny(run_name="done"))
    if change == "truncate":
        _truncate(run_dir / CHECKPOINT)
    elif change == "delete":
        (run_dir / CHECKPOINT).unlink()
    before = snapshot(run_dir)
    overrides = change if isinstance(change, dict) else {}
    with pytest.raises(ConfigError, match=error):
        resume(tiny(run_name="done", resume=True, **overrides))
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", ".", "a\\b"])
def test_a_run_name_that_leaves_output_dir_is_refused(tiny, name):
    with pytest.raises(ConfigError, match="'run-name' must be a plain directory name"):
        tiny(run_name=name)


@pytest.mark.parametrize("name", ["123", "2024-01-01", "run.v2", "a..b"])
def test_plain_run_names_are_accepted(tiny, name):
    assert tiny(run_name=name).output.run_name == name


@pytest.mark.parametrize("nodes", [3, 1])
def test_resume_with_another_client_count_is_refused(tiny, nodes):
    run_dir = finished_run(tiny(run_name="two"), num_clients=2)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=rf"checkpointed run had 2 clients, this one has {nodes}"):
        resume(tiny(run_name="two", resume=True), nodes=nodes)
    assert snapshot(run_dir) == before


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_fails_at_once_naming_the_holder(tiny):
    run_dir = finished_run(tiny(run_name="live"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir / "run.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        before = snapshot(run_dir)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"in use by another run \(PID {holder.pid},"):
            resume(tiny(run_name="live", resume=True))
        assert time.monotonic() - t0 < 5
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_held_for_the_run_and_released_after(tiny):
    from mpsl_flwr.run_lock import RunLock, RunLockedError

    run_dir = finished_run(tiny(run_name="once"))
    assert not (run_dir / "run.lock").exists()  # released (and removed) when the run ended
    with RunLock.acquire(run_dir), pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
        RunLock.acquire(run_dir)
    with RunLock.acquire(run_dir):
        pass


def _saved_twice(tiny) -> Checkpointer:
    """A checkpointer of a run with checkpoints after epochs 1 and 2."""
    cfg = tiny(run_name="gen", epochs=2)
    run_dir = RunRecorder(cfg).dir
    for epoch in (1, 2):
        Checkpointer(run_dir, cfg).save({"epoch": epoch, "history": []})
    return Checkpointer(run_dir, cfg)


def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one(tiny, logs):
    ckpt = _saved_twice(tiny)
    assert torch.load(ckpt.path.with_name(PREVIOUS), weights_only=True)["epoch"] == 1
    _truncate(ckpt.path)
    assert ckpt.load()["epoch"] == 1
    warning = logs.text
    assert f"{ckpt.path} is truncated or corrupt" in warning
    assert f"Resuming from {ckpt.path.with_name(PREVIOUS)} (after epoch 1)" in warning
    assert "weights_only" not in warning
    # The next checkpoint replaces the corrupt one and keeps the good previous one.
    ckpt.save({"epoch": 2, "history": []})
    assert torch.load(ckpt.path.with_name(PREVIOUS), weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_unreadable_checkpoints_are_named_and_never_advise_weights_only_false(tiny, damage):
    ckpt = _saved_twice(tiny)
    for path in (ckpt.path, ckpt.path.with_name(PREVIOUS)):
        if damage == "truncate":
            _truncate(path)
        else:
            torch.save({"format": 1, "epoch": 1, "evil": Path("x")}, path)
    with pytest.raises(ConfigError) as err:
        ckpt.load()
    text = str(err.value)
    assert str(ckpt.path) in text and PREVIOUS in text
    assert "weights_only" not in text and err.value.__cause__ is None
    assert ("tensors and plain values" if damage == "tamper" else "truncated or corrupt") in text


def _disk_full_at_save(monkeypatch, at: int) -> None:
    """The ``at``-th checkpoint write fills the disk: part of it lands in the temporary
    file, then ENOSPC; while that file is left, every other write fails the same way."""
    import mpsl_flwr.checkpoint as checkpoint
    import mpsl_flwr.results as results

    calls = {"n": 0}
    real_save, real_write = checkpoint.torch.save, results._atomic_write

    def save(obj, fh):
        calls["n"] += 1
        if calls["n"] == at:
            fh.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, fh)

    def write(path, text):
        if (path.parent / (CHECKPOINT + ".tmp")).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, text)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(results, "_atomic_write", write)


def test_a_full_disk_cleans_up_fails_the_run_with_the_reason_and_resume_works(tiny, monkeypatch):
    small = {"strategy": "centralized", "epochs": 2, "synthetic_train_size": 16}
    small |= {"synthetic_test_size": 16, "run_name": "full"}
    _disk_full_at_save(monkeypatch, at=2)
    with pytest.raises(OSError, match="No space left on device"):
        run_experiment(tiny(**small), None)
    run_dir = Path(tiny().output.output_dir) / "full"
    assert not (run_dir / (CHECKPOINT + ".tmp")).exists()
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["status"] == "failed"
    assert f"{CHECKPOINT}" in summary["error"] and "No space left" in summary["error"]
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["epoch"] == 1  # intact
    monkeypatch.undo()
    run_experiment(tiny(resume=True, **small), None)
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["status"] == "completed"
    assert [row["epoch"] for row in summary["history"]] == [1, 2]


def test_an_accepted_resume_removes_a_partial_checkpoint_left_by_a_killed_run(tiny):
    cfg = tiny(run_name="killed", resume=True)
    run_dir = finished_run(tiny(run_name="killed"))
    (run_dir / (CHECKPOINT + ".tmp")).write_bytes(b"\0" * 4096)  # kill -9 mid-write
    Checkpointing(Checkpointer(run_dir, cfg), list, lambda history: None).load(num_clients=2)
    assert not (run_dir / (CHECKPOINT + ".tmp")).exists()


def test_a_client_state_missing_from_a_checkpoint_is_asked_again_then_marked(tiny, logs):
    cfg = tiny(run_name="gaps", synthetic_train_size=32, synthetic_test_size=16, step_timeout=5.0)
    grid = LocalGrid(client_app, 2, cfg.to_mapping())
    asked = {1000: 0, 1001: 0}

    def flaky(node_id, msg):
        if msg.metadata.message_type != "query.state":
            return msg
        asked[node_id] += 1
        # Node 1000 fails once and answers when asked again; node 1001 never does.
        return "raise" if node_id == 1001 or asked[node_id] == 1 else msg

    grid.fault = flaky
    run_dir = run_experiment(cfg, grid)
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert asked == {1000: 2, 1001: 2}
    assert sorted(ckpt["clients"]) == [0] and ckpt["incomplete"] == [1]
    assert json.loads((run_dir / SUMMARY).read_text())["flwr-run-id"] == 1  # for launchers
    assert "Checkpoint after epoch 1 is incomplete: no state of clients [1]" in logs.text
    logs.clear()
    resume(tiny(run_name="gaps", resume=True, synthetic_train_size=32, synthetic_test_size=16))
    assert "resumed run will not equal an uninterrupted one" in logs.text


def test_resume_allows_harmless_keys_and_a_copied_run_dir(tiny, tmp_path):
    import shutil

    run_dir = finished_run(tiny(run_name="orig"))
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run_dir, copy)
    cfg = tiny(run_name="copy", resume=True, eval_batch_size=8, checkpoint_every=2)
    cfg = RunConfig.from_mapping({**cfg.to_mapping(), "output-dir": str(copy.parent)})
    assert Checkpointer(copy, cfg).load()["epoch"] == 1


class _TwinLauncherLink:
    """A FlwrCli whose ``flwr run`` is a second run of an already taken run-name: its
    ServerApp writes ``<name>-2`` while the first run's ``<name>`` is there."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.env: dict[str, str] = {}

    def conn_args(self) -> list[str]:
        return []

    def flwr(self, *args: str, **kwargs) -> str:
        if args[0] == "run":
            self.submitted = args[args.index("--run-config") + 1]
            for name, run_id, loss in (("same", 1, 9.0), ("same-2", 2, 1.0)):
                (self.output_dir / name).mkdir(parents=True)
                row = {"epoch": 1, "train-loss": loss}
                summary = {"status": "completed", "flwr-run-id": run_id, "history": [row]}
                (self.output_dir / name / SUMMARY).write_text(json.dumps(summary))
            return json.dumps({"run-id": 2})
        return ""

    def run_status(self, run_id: int) -> str:
        return "finished:completed"

    def check_alive(self) -> None:
        pass


def test_the_launcher_reports_the_run_dir_its_own_run_wrote(tmp_path, capsys):
    from mpsl_flwr.ops.launch import flwr_run, report

    link = _TwinLauncherLink(tmp_path)
    config = {"output-dir": str(tmp_path), "run-name": "same"}
    outcome = flwr_run(link, config, 2, stream=False)  # type: ignore[arg-type]
    assert outcome.run_dir == tmp_path / "same-2"
    assert report(outcome, "") == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 |" in out and f"Results: {tmp_path / 'same-2'}" in out


def test_a_streamed_run_prints_its_table_and_results_path_once(tmp_path, capsys):
    """The ServerApp prints the table and the results path into the streamed log; the
    launcher's report then adds only how the run ended (item 24)."""
    from mpsl_flwr.ops.launch import flwr_run, report

    outcome = flwr_run(
        _TwinLauncherLink(tmp_path),  # type: ignore[arg-type]
        {"output-dir": str(tmp_path), "run-name": "once"},
        2,
        stream=False,
    )
    outcome.streamed = True
    assert report(outcome, "") == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 |" not in out and "Results:" not in out
    assert f"Summary: {outcome.run_dir / 'summary.json'}" in out


def test_the_launchers_logs_are_kept_in_the_run_dir(tmp_path):
    """A failure message points at logs that outlive the launcher's temporary dirs."""
    from mpsl_flwr.ops.runs import keep_logs

    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    (home / "superlink.log").write_text("link\n")
    (home / "logs" / "supernode-0.log").write_text("node\n")
    kept = keep_logs([home / "superlink.log", home / "logs", home / "absent.log"], tmp_path / "r")
    assert kept == tmp_path / "r" / "logs"
    assert (kept / "superlink.log").read_text() == "link\n"
    assert (kept / "logs" / "supernode-0.log").read_text() == "node\n"


def test_relative_local_paths_are_submitted_absolute(tmp_path, monkeypatch):
    """data-dir, pretrained and node-registry mean what they named where the command was
    typed, whichever directory the ServerApp and ClientApps run in."""
    from mpsl_flwr.config import parse_overrides
    from mpsl_flwr.ops.launch import flwr_run

    monkeypatch.chdir(tmp_path)
    link = _TwinLauncherLink(tmp_path)
    config = {
        "output-dir": str(tmp_path),
        "run-name": "same",
        "data-dir": "data/ucf",
        "pretrained": "/abs/vit.pth",
        "node-registry": "~/reg.json",
    }
    flwr_run(link, config, 2, stream=False)  # type: ignore[arg-type]
    submitted = parse_overrides([link.submitted])
    assert submitted["data-dir"] == str(tmp_path / "data" / "ucf")
    assert submitted["pretrained"] == "/abs/vit.pth"
    assert submitted["node-registry"] == str(Path.home() / "reg.json")

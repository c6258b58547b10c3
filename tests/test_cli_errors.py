"""Every installed command shows a user error as one line and exits 2; ``--debug`` shows
the traceback; the ServerApp logs one line (issue 15, item 11). Nothing trains here."""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from mpsl_flwr import cli
from mpsl_flwr.config import ConfigError
from mpsl_flwr.project import PROJECT_DIR

NODES_FLAG = {name: "--nodes" for name in cli.COMMANDS} | {"partition-plot": "--num-partitions"}
NODES_FLAG.pop("centralized")
NODES_FLAG.pop("pretrain")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_debug(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.COMMANDS[name](["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mpsl-{name}") and "--debug" in out


@pytest.mark.parametrize("name", list(NODES_FLAG))
def test_zero_nodes_is_refused_at_parse_time(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.COMMANDS[name]([NODES_FLAG[name], "0"])
    assert done.value.code == 2
    assert f"{NODES_FLAG[name]}: must be >= 1; got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("run", ["--run-config", "seed=-1"]),
        ("deploy", ["--run-config", "seed=-1"]),
        ("compare", ["--run-config", "seed=-1"]),
        ("costs", ["--run-config", "seed=-1"]),
        ("label-attack", ["--run-config", "seed=-1"]),
        ("centralized", ["--run-config", "seed=-1"]),
        ("pretrain", ["--run-config", "seed=-1"]),
        ("partition-plot", ["--num-partitions", "2", "--run-config", "seed=-1"]),
        ("traffic-sweep", ["--run-config", "seed=-1"]),
        ("run", ["--run-config", "dataset=synthetic-va"]),
    ],
)
def test_a_config_error_is_one_line_and_exit_2(name, argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.COMMANDS[name](argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"mpsl-{name}: error: {ERRORS[argv[-1]]}"]


ERRORS = {
    "seed=-1": "Run-config key 'seed' must be >= 0; got -1. Fix: e.g. --run-config 'seed=0'.",
    "dataset=synthetic-va": "Run-config value dataset=synthetic-va is not a number, boolean or "
    "quoted string (flwr run's syntax); quote it: dataset='synthetic-va'.",
}


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError, match="'seed' must be >= 0"):
        cli.run(["--debug", "--run-config", "seed=-1"])


def test_a_dataset_error_leads_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as done:
        cli.run(["--run-config", "dataset='meld'"])
    assert done.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("mpsl-run: error: Dataset 'meld' is read from local files")
    assert "Traceback" not in "\n".join(lines)


def test_the_installed_entry_point_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "mpsl_flwr.cli", "run", "--run-config", "step-timeout=nan"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "mpsl-run: error: Run-config key 'step-timeout' must be a finite number; got nan. "
        "Fix: e.g. --run-config 'step-timeout=120.0'."
    ]


def test_the_server_app_logs_one_line(monkeypatch):
    from strategies import server_app

    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append  # type: ignore[method-assign]
    monkeypatch.setattr(logging.getLogger("mpsl_flwr"), "handlers", [handler])
    context = Context(1, 0, {}, RecordDict(), {"weight-decay": -1.0})
    with pytest.raises(ConfigError) as err:
        server_app.main(None, context)
    assert [r.getMessage() for r in logged] == [
        "mpsl-flwr: error: Run-config key 'weight-decay' must be >= 0; got -1.0. "
        "Fix: e.g. --run-config 'weight-decay=0.01'."
    ]
    # Raised again from the ServerApp's own frame: no frames of the code that found it.
    frames = [Path(f.filename).name for f in traceback.extract_tb(err.value.__traceback__)]
    assert frames == ["test_cli_errors.py", "server_app.py"]

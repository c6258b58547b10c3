"""A relative ``output-dir`` is relative to the app directory, never to the working
directory (under ``flwr run`` the SuperLink's), and runs say where they write
(issue 15, item 13). Nothing trains here."""

from __future__ import annotations

import json
import logging

import pytest

from mpsl_flwr import project
from mpsl_flwr.config import RunConfig


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An app directory and a different working directory (as the SuperLink's)."""
    app, cwd = tmp_path / "app", tmp_path / "superlink-cwd"
    app.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(project, "PROJECT_DIR", app)
    return app, cwd


def test_the_recorder_resolves_against_the_app_dir_and_logs_it(elsewhere, caplog, monkeypatch):
    from mpsl_flwr.results import RunRecorder

    app, cwd = elsewhere
    logger = logging.getLogger("mpsl_flwr")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    cfg = RunConfig.from_mapping({"output-dir": "outs", "run-name": "r"})
    recorder = RunRecorder(cfg)
    assert recorder.dir == app / "outs" / "r" and recorder.dir.is_dir()
    assert not (cwd / "outs").exists()
    assert f"Writing results to {app / 'outs' / 'r'}" in caplog.text
    summary = json.loads((recorder.dir / "summary.json").read_text())
    assert summary["run-dir"] == str(app / "outs" / "r")


def test_absolute_and_home_paths_are_kept(tmp_path):
    assert project.project_path(tmp_path / "x") == tmp_path / "x"
    assert project.project_path("~/x").is_absolute()


def test_the_launcher_picks_the_same_dir_and_prints_it(elsewhere, capsys):
    from mpsl_flwr.ops.launch import flwr_run
    from mpsl_flwr.ops.runs import choose_run_dir

    app, _ = elsewhere
    (app / "pyproject.toml").write_text("")
    overrides = {"output-dir": "outs", "run-name": "r"}
    assert choose_run_dir(overrides, app) == app / "outs" / "r"

    class Refusing:
        """A SuperLink that refuses every run."""

        def conn_args(self):
            return []

        def flwr(self, *args):
            return json.dumps({"error-message": "refused"})

    with pytest.raises(RuntimeError, match="refused"):
        flwr_run(Refusing(), overrides, 2, app_dir=app)  # type: ignore[arg-type]
    assert f"Run directory: {app / 'outs' / 'r'}" in capsys.readouterr().out

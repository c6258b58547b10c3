"""Run names and run directories, on the launcher's side of a ``flwr run``.

A run writes ``<output-dir>/<run-name>/`` (its recorder, :mod:`mpsl_flwr.results`, in
the ServerApp process). The launcher has to know that directory before the run starts,
to read *this* run's ``summary.json`` and never an older one's, so it chooses the name
itself and submits it: the configured ``run-name``, or the recorder's default
``<strategy>-<dataset>-<size>-s<seed>-<time>``, made free with ``-2``, ``-3`` ... unless
the run resumes, with the output directory made absolute (a relative one is relative
to the app directory, as in the ServerApp: :func:`mpsl_flwr.project.project_path`).
:func:`choose_run_dir` is that decision. Two launchers may choose the same free name at
once; the ServerApp that comes second then writes ``<name>-2``, so the launcher looks
for the directory whose summary names its Flower run (:func:`own_run_dir`).
:func:`read_summary` and :func:`summary_status` read what the run wrote.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsl_flwr.config import resolve_config
from mpsl_flwr.ops.superlink import COMPLETED
from mpsl_flwr.project import project_path
from mpsl_flwr.results import SUMMARY, default_run_name, run_name_candidates


def free_run_name(output_dir: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3`` ... if taken: the name the run's recorder will
    use too, so the launcher reads this run's summary and never an older one's."""
    return next(c for c in run_name_candidates(name) if not (output_dir / c).exists())


def choose_run_dir(run_config: Mapping[str, Any], app_dir: Path) -> Path:
    """The directory a run with ``run_config`` overrides of ``app_dir``'s config will
    write: submit it as ``output-dir=<parent> run-name=<name>``."""
    cfg = resolve_config(dict(run_config), app_dir)
    name = cfg.run_name or default_run_name(cfg)
    output_dir = project_path(cfg.output_dir, app_dir.resolve())
    if not cfg.resume:
        name = free_run_name(output_dir, name)
    return output_dir / name


LOCAL_PATH_KEYS = ("data-dir", "pretrained", "node-registry")
"""Run-config keys that name files on this machine."""


def absolute_local_paths(run_config: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """The relative :data:`LOCAL_PATH_KEYS` of ``run_config`` made absolute (``~``
    expanded) against the directory the command was typed in (``cwd``, default the
    current one), as a user means them: the ServerApp and ClientApps that read them may
    run elsewhere (SuperNodes started in other directories; plain ``flwr run`` from
    ``$FLWR_HOME``)."""
    base = cwd or Path.cwd()
    absolute = {}
    for key in LOCAL_PATH_KEYS:
        value = run_config.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            absolute[key] = str(base / Path(value).expanduser())
    return absolute


def own_run_dir(chosen: Path, run_id: int) -> Path | None:
    """Of ``chosen`` and its ``-2``, ``-3`` ... siblings, the directory whose summary.json
    names Flower run ``run_id``; None while none does."""
    for name in run_name_candidates(chosen.name):
        path = chosen.with_name(name)
        if not path.exists():
            return None
        try:
            if read_summary(path).get("flwr-run-id") == run_id:
                return path
        except (OSError, ValueError):
            continue
    return None


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``."""
    return json.loads((run_dir / SUMMARY).read_text())


def summary_status(run_dir: Path) -> str | None:
    """``status`` of the run's summary.json, or None while there is none to read."""
    try:
        return str(read_summary(run_dir).get("status"))
    except (OSError, ValueError):
        return None


LOGS = "logs"
"""``<run-dir>/logs/``: the launcher's process logs, kept after its temporary dirs go."""


def keep_logs(logs: Iterable[Path], run_dir: Path) -> Path:
    """Copy the process logs ``logs`` (files or folders) into ``<run_dir>/logs/``, where
    a failure message can point: the temporary directory that held them is removed when
    the launcher exits. Returns that folder."""
    target = run_dir / LOGS
    target.mkdir(parents=True, exist_ok=True)
    for path in logs:
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, target / path.name)
    return target


@dataclass
class RunOutcome:
    """How a ``flwr run`` ended and where its results are."""

    run_id: int
    status: str
    run_dir: Path
    wall_time_s: float
    # Whether the run's log (with the ServerApp's results table) was streamed live.
    streamed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED

    def summary(self) -> dict[str, Any]:
        return read_summary(self.run_dir)

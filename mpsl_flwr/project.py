"""Where the project lives: the directory holding ``pyproject.toml`` and the app.

The one definition of the project root, shared by the run-config loader
(:func:`mpsl_flwr.config.load_pyproject_config`) and the process tooling in
:mod:`mpsl_flwr.ops` (the app directory that ``flwr run`` submits, the code directory
put on ``PYTHONPATH`` of deployed helpers) and :mod:`mpsl_flwr.tools` (default output
folders), and the base of every relative output path (:func:`project_path`).
"""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR: Path = Path(__file__).resolve().parent.parent
"""The checkout (or installed tree) this package was imported from."""


def project_path(path: str | Path, base: Path | None = None) -> Path:
    """``path`` from the run config (``output-dir``) made absolute: ``~`` expanded, a
    relative path taken against the project directory (``base``, default
    :data:`PROJECT_DIR`), never against the working directory.

    Under plain ``flwr run`` the ServerApp's working directory is the one the SuperLink
    was first started in, which may be another project's; its project directory is the
    copy of the app the SuperLink installed (``$FLWR_HOME/apps/...``), the same on every
    run of that app. Runs log the absolute directory they write at start.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base or PROJECT_DIR) / path

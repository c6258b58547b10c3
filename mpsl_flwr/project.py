"""Where the project lives: the directory holding ``pyproject.toml`` and the app.

The one definition of the project root, shared by the run-config loader
(:func:`mpsl_flwr.config.load_pyproject_config`) and the process tooling in
:mod:`mpsl_flwr.ops` (the app directory that ``flwr run`` submits, the code directory
put on ``PYTHONPATH`` of deployed helpers) and :mod:`mpsl_flwr.tools` (default output
folders).
"""

from __future__ import annotations

from pathlib import Path

PROJECT_DIR: Path = Path(__file__).resolve().parent.parent
"""The checkout (or installed tree) this package was imported from."""

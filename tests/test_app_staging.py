"""``flwr run`` gets a copy of the app without its ignored directories, and the same FAB."""

from __future__ import annotations

import shutil
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from mpsl_flwr.ops.app_staging import app_files, staged_app
from mpsl_flwr.project import PROJECT_DIR


def _app(root: Path, gitignore: str) -> Path:
    app = root / "app"
    for rel in ("mpsl_flwr/core.py", "docs/notes.md", ".venv/lib/site.py", "outputs/run.json"):
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(f"# {rel}\n")
    (app / "keep").mkdir()
    (app / "keep" / "app.py").write_text("# brought back by a negated pattern\n")
    (app / "keep" / "other.py").write_text("# stays ignored\n")
    shutil.copyfile(PROJECT_DIR / "pyproject.toml", app / "pyproject.toml")
    (app / ".gitignore").write_text(gitignore)
    (app / "linked.py").symlink_to(app / "mpsl_flwr" / "core.py")
    return app


def test_ignored_directories_are_not_copied_and_the_fab_is_unchanged(tmp_path):
    app = _app(tmp_path, ".venv/\n/outputs/\n/keep/\n")
    assert app_files(app) == [".gitignore", "docs/notes.md", "mpsl_flwr/core.py", "pyproject.toml"]
    with staged_app(app) as staged:
        assert not (staged / ".venv").exists() and not (staged / "linked.py").exists()
        assert build_fab_from_disk(staged) == build_fab_from_disk(app)
    assert not staged.exists()


def test_a_negated_pattern_keeps_every_directory_in_the_walk(tmp_path):
    app = _app(tmp_path, "/outputs/\n/keep/*\n!/keep/app.py\n")
    assert "keep/app.py" in app_files(app) and "keep/other.py" not in app_files(app)
    with staged_app(app) as staged:
        assert build_fab_from_disk(staged) == build_fab_from_disk(app)


def test_the_projects_own_fab_is_byte_for_byte_the_one_flwr_builds():
    """The real tree, with whatever ``.venv``, caches and outputs it has here or in CI."""
    with staged_app(PROJECT_DIR) as staged:
        assert build_fab_from_disk(staged) == build_fab_from_disk(PROJECT_DIR)

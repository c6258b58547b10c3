"""A Flower App directory without what its ``.gitignore`` leaves out, for ``flwr run``.

``flwr run <dir>`` (flwr 1.41/1.42, ``flwr.cli.utils.collect_files``) walks and resolves
every file under ``<dir>`` and filters afterwards. ``make install`` puts ``.venv`` (about
50 000 files with torch) inside the project, so each ``flwr run`` spent about 5 s of CPU
on 2 cores on files that never reach the FAB: every strategy of ``mpsl-compare``, every
run of ``mpsl-paper-claims`` and every end-to-end test paid it.

:func:`staged_app` copies the app into a temporary directory without entering the
directories that the app's root ``.gitignore`` or Flower's own exclude rules leave out.
Flower then applies all of its rules to the copy, so the FAB it builds is the one it
builds from the original, byte for byte (``tests/test_app_staging.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS


def _walk(app_dir: Path) -> Iterator[Path]:
    """The regular files under ``app_dir`` outside ignored directories, relative to it."""
    patterns = [*load_gitignore_patterns(app_dir / ".gitignore"), *APP_PUBLISH_EXCLUDE_PATTERNS]
    # A negated pattern can bring back a file below an ignored directory (Flower matches
    # file by file): then no directory can be skipped.
    prune = not any(p.startswith("!") for p in patterns)
    with _quiet_pathspec():
        ignored = build_pathspec(patterns)
    for dirpath, dirnames, filenames in os.walk(app_dir, followlinks=False):
        here = Path(dirpath).relative_to(app_dir)
        # A pattern that matches "<dir>/" ("build/", ".venv/**", "*.egg-info/") matches
        # every file below it.
        dirnames[:] = [
            d
            for d in dirnames
            if not (Path(dirpath) / d).is_symlink()
            and not (prune and ignored.match_file(f"{(here / d).as_posix()}/"))
        ]
        for name in filenames:
            if not (Path(dirpath) / name).is_symlink():
                yield here / name


def app_files(app_dir: Path) -> list[str]:
    """The files of ``app_dir`` that Flower's publish filter keeps, as POSIX paths."""
    found = {rel.as_posix(): app_dir / rel for rel in _walk(app_dir)}
    with _quiet_pathspec():
        return sorted(filter_paths_for_publish(found))


@contextlib.contextmanager
def _quiet_pathspec() -> Iterator[None]:
    """Flower builds its specs from "gitwildmatch" patterns, which pathspec 1.x
    deprecates; the warning is Flower's to fix and would print on every run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "GitWildMatchPattern", DeprecationWarning)
        yield


@contextlib.contextmanager
def staged_app(app_dir: Path) -> Iterator[Path]:
    """A temporary copy of ``app_dir``'s app files, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="mpsl-app-") as tmp:
        staged = Path(tmp) / app_dir.name
        for rel in app_files(app_dir):
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(app_dir / rel, staged / rel)
        yield staged

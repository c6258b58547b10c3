"""The one error a user sees when a dataset folder is missing, incomplete or malformed.

Loaders check the layout when a dataset is opened and raise these with the expected
path and folder tree, so a wrong ``data-dir`` never surfaces as a traceback from deep
inside a decoder. Decoding failures of single files are re-raised as these too, naming
the file.
"""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A real dataset cannot be read from ``data-dir``."""


class DatasetNotFoundError(DatasetError):
    """A folder or file the dataset needs does not exist."""


class DatasetFormatError(DatasetError):
    """A file exists but does not have the dataset's official format."""


def layout_hint(dataset: str, layout: str) -> str:
    """The expected folder tree, as appended to every error message."""
    tree = "\n".join(f"    {line}" for line in layout.strip("\n").splitlines())
    return (
        f"Dataset '{dataset}' expects this layout under run-config 'data-dir' "
        f"(see docs/datasets.md):\n{tree}"
    )


def require_dir(path: Path, dataset: str, layout: str, what: str = "folder") -> Path:
    """``path`` if it is a directory, else :class:`DatasetNotFoundError`."""
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{dataset}: missing {what} {path}.\n{layout_hint(dataset, layout)}"
        )
    return path


def require_file(path: Path, dataset: str, layout: str, what: str = "file") -> Path:
    """``path`` if it is a file, else :class:`DatasetNotFoundError`."""
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{dataset}: missing {what} {path}.\n{layout_hint(dataset, layout)}"
        )
    return path


def malformed(
    path: Path, dataset: str, layout: str, problem: str, line: int | None = None
) -> DatasetFormatError:
    """A :class:`DatasetFormatError` naming the file (and 1-based line) and what is wrong.

    Every parser reports bad rows through this, so all say "<file>, line <n>: ..." alike.
    """
    where = f"{path}, line {line}" if line is not None else f"{path} is malformed"
    return DatasetFormatError(f"{dataset}: {where}: {problem}\n{layout_hint(dataset, layout)}")

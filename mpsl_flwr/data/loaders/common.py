"""What every real-dataset loader shares: its description and the parsing helpers.

A loader is a :class:`DatasetSpec`: static facts (task, modalities, default sizes, the
expected folder tree) plus a ``parse`` function that checks the layout under
``data-dir`` and turns the official index files into one :class:`SampleTable` per
split. Parsing reads index files only, never media, so it is fast enough to run when a
dataset is opened; problems surface there as one :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.base import Kind
from mpsl_flwr.data.errors import (
    DatasetFormatError,
    DatasetNotFoundError,
    layout_hint,
    malformed,
    require_dir,
    require_file,
)
from mpsl_flwr.data.lazy import SampleTable

log = logging.getLogger("mpsl_flwr")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
CLASSES_FILE = "classes.txt"
SHOWN = 3  # entries named in a message; the count covers the rest
RARE_FRACTION = 0.05  # a class this far under the median class size is suspect


class ProxyLabels(Protocol):
    """Retrieval's partition pseudo-labels of a split, called with keyword arguments
    (``proxy_labels(table, clusters=k, seed=s)``), so the parameter names are the API."""

    def __call__(self, table: SampleTable, clusters: int, seed: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Parsed:
    """A dataset's class names and its train and test :class:`SampleTable`."""

    class_names: tuple[str, ...]
    train: SampleTable
    test: SampleTable


@dataclass(frozen=True)
class DatasetSpec:
    """A real dataset: task, modalities, default input sizes, layout and parser.

    ``proxy_labels(table, clusters, seed)`` gives retrieval's partition pseudo-labels.
    """

    name: str
    kind: Kind
    modalities: tuple[str, ...]
    layout: str
    parse: Callable[[Path, MissingFiles], Parsed]
    image_size: int = 0
    audio_frames: int = 0
    text_length: int = 0
    proxy_labels: ProxyLabels | None = None


@dataclass(frozen=True)
class Listed:
    """A media file an index lists, as messages show it, and where: ``<file> line <n>``."""

    name: str
    where: str

    @classmethod
    def at(cls, name: str | Path, index: Path, line: int) -> Listed:
        return cls(str(name), f"{index.name} line {line}")

    def __str__(self) -> str:
        return f"{self.name} ({self.where})"


class Files:
    """Path helpers bound to one dataset, so every error names it and shows its layout.

    ``missing_files`` is run-config ``missing-files``: what to do with listed media
    that ``data-dir`` lacks.
    """

    def __init__(self, dataset: str, layout: str, root: Path, missing_files: MissingFiles) -> None:
        self.dataset, self.layout, self.root = dataset, layout, root
        self.missing_files = missing_files

    def dir(self, *parts: str) -> Path:
        return require_dir(self.root.joinpath(*parts), self.dataset, self.layout)

    def file(self, *parts: str) -> Path:
        return require_file(self.root.joinpath(*parts), self.dataset, self.layout)

    def first_existing(self, *candidates: str) -> Path:
        """The first of several accepted names for one file (e.g. val.csv/validate.csv)."""
        for name in candidates:
            if (self.root / name).is_file():
                return self.root / name
        return self.file(candidates[0])

    def malformed(self, path: Path, problem: str, line: int | None = None) -> DatasetFormatError:
        """The error for a bad file or, with ``line``, one bad line of it."""
        return malformed(path, self.dataset, self.layout, problem, line)

    def missing(self, what: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.dataset}: {what}.\n{layout_hint(self.dataset, self.layout)}"
        )

    def lines(self, path: Path) -> list[str]:
        """Non-empty lines of a UTF-8 text file, stripped."""
        return [line for _, line in self.numbered_lines(path)]

    def numbered_lines(self, path: Path) -> list[tuple[int, str]]:
        """(1-based line number, stripped line) of each non-empty line, for error messages."""
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise self.malformed(path, f"not UTF-8 text ({err.reason})") from err
        return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]

    def csv_rows(self, path: Path, columns: Iterable[str]) -> list[tuple[int, dict[str, str]]]:
        """(line number, row) of each row of a CSV file whose header has ``columns``.

        A row lacking one of ``columns`` (a cut-off file) fails here, naming its line,
        rather than as a ``None`` deep inside a loader.
        """
        columns = tuple(columns)
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise self.malformed(
                    path, f"its header lacks column(s) {missing}; found {header[:12]}"
                )
            try:
                return [
                    (line, self._complete(path, line, row, columns))
                    for line, row in numbered_rows(reader)
                ]
            except csv.Error as err:
                raise self.malformed(path, f"CSV parse error: {err}", reader.line_num) from err

    def _complete(
        self, path: Path, line: int, row: dict[str, str], columns: tuple[str, ...]
    ) -> dict[str, str]:
        absent = [c for c in columns if row.get(c) is None]
        if absent:
            raise self.malformed(
                path,
                f"the row ends before column(s) {absent}; the file looks cut off: "
                "restore it from the official release",
                line,
            )
        return row

    def json(self, path: Path) -> Any:
        try:
            with path.open(encoding="utf-8") as fh:
                return json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self.malformed(path, f"not valid JSON ({err})") from err

    def check_media(
        self, table: SampleTable, split: str, noun: str, listed: Sequence[Listed]
    ) -> SampleTable:
        """``table`` without the samples whose media file is absent (``listed[i]`` says
        where ``table.media[i]`` is listed), per ``missing-files``.

        Every file gets one ``stat`` at open, so a missing one is named now, not when
        its batch is drawn an epoch later.
        """
        found = self.keep_listed(split, noun, listed, [p.is_file() for p in table.media])
        return table.subset(found[table.media_of])

    def keep_listed(
        self, split: str, noun: str, listed: Sequence[Listed], found: Sequence[bool]
    ) -> np.ndarray:
        """Mask of the ``listed`` media that were ``found``; fails when none was, or when
        any is missing and ``missing-files`` is ``fail``, else warns naming the first few."""
        mask = np.asarray(found, dtype=bool)
        absent = np.flatnonzero(~mask)
        if not len(listed):
            raise self.missing(f"the {split} split has no samples")
        if not len(absent):
            return mask
        shown = first_few([str(listed[i]) for i in absent.tolist()])
        if len(absent) == len(listed):
            raise self.missing(
                f"none of the {len(listed)} {split} {noun} listed in the index exists under "
                f"{self.root} ({shown}); check 'data-dir'"
            )
        what = (
            f"{len(absent)} of {len(listed)} {split} {noun} listed in the index are missing: "
            f"{shown}"
        )
        if self.missing_files == "fail":
            raise self.missing(
                f'{what}. Restore them, or set run-config missing-files="skip" to leave them out'
            )
        log.warning('%s: %s; they were left out (missing-files="skip").', self.dataset, what)
        return mask


def numbered_rows(reader: Any) -> Iterator[tuple[int, Any]]:
    """(line the row starts on, row) of a ``csv.reader`` or ``csv.DictReader``; a quoted
    field may span lines, so the reader's own ``line_num`` is where the row ends."""
    start = reader.line_num + 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def scan(root: Path, *groups: tuple[str, ...]) -> tuple[dict[str, Path], ...]:
    """For each group of suffixes, file stem -> path of every such file under ``root``.

    One directory walk instead of one ``stat`` per indexed sample; with duplicate stems
    the path that sorts first wins, so the result does not depend on walk order.
    Symlinked folders are followed (class folders often live on another disk), each
    real folder once, so a link back up the tree cannot loop.
    """
    found: tuple[dict[str, Path], ...] = tuple({} for _ in groups)
    seen = {os.path.realpath(root)}
    for dirpath, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = _unvisited(dirpath, subdirs, seen)
        for name in names:
            stem, suffix = os.path.splitext(name)
            if name.startswith("._"):  # macOS resource forks inside archives
                continue
            for suffixes, table in zip(groups, found, strict=True):
                if suffix.lower() in suffixes:
                    path = Path(dirpath) / name
                    if stem not in table or str(path) < str(table[stem]):
                        table[stem] = path
    return found


def _unvisited(dirpath: str, subdirs: list[str], seen: set[str]) -> list[str]:
    """The ``subdirs`` whose real folder is not walked yet, marking them as walked."""
    keep = []
    for name in sorted(subdirs):
        real = os.path.realpath(os.path.join(dirpath, name))
        if real not in seen:
            seen.add(real)
            keep.append(name)
    return keep


def class_override(files: Files) -> tuple[str, ...] | None:
    """Class names from ``<data-dir>/classes.txt`` (one per line, in label order), if any."""
    path = files.root / CLASSES_FILE
    if not path.is_file():
        return None
    names = tuple(files.lines(path))
    if len(set(names)) != len(names) or not names:
        raise files.malformed(path, "class names must be unique and at least one")
    return names


def label_ids(names: Iterable[str], class_names: tuple[str, ...]) -> np.ndarray:
    """Class index of each name (names must all be in ``class_names``)."""
    index = {c: i for i, c in enumerate(class_names)}
    return np.fromiter((index[n] for n in names), dtype=np.int64)


def warn_rows(dataset: str, problem: str, rows: Sequence[Listed]) -> None:
    """One warning for index rows that parse but look damaged, naming the first few."""
    if rows:
        shown = first_few([str(r) for r in rows])
        log.warning("%s: %d row(s) %s: %s.", dataset, len(rows), problem, shown)


def warn_rare_classes(dataset: str, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    """Warn about training classes with very few samples next to the rest.

    A cut-off index entry (a COCO-QA answer cut to one letter) becomes a class of its own
    and shifts every label after it; such a class is tiny, so it shows up here.
    """
    counts = np.bincount(labels, minlength=len(class_names))
    if not counts.any():
        return
    median = float(np.median(counts[counts > 0]))
    rare = [i for i in np.flatnonzero(counts) if counts[i] < RARE_FRACTION * median]
    if rare:
        log.warning(
            "%s: %d class(es) have under %d%% of the median class size (%g): %s. A cut-off "
            "index entry makes such a class; check the entries with that label.",
            dataset,
            len(rare),
            round(100 * RARE_FRACTION),
            median,
            first_few([f"{class_names[i]!r} ({counts[i]} train samples)" for i in rare]),
        )


def warn_empty_classes(
    dataset: str, split: str, labels: np.ndarray, class_names: tuple[str, ...]
) -> None:
    """Warn about classes that ``split`` has no sample of: the model still has an output
    for each, and a wrong ``classes.txt`` or a partial copy shows up this way."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [repr(class_names[i]) for i in np.flatnonzero(counts == 0)]
    if empty:
        log.warning(
            "%s: %d class(es) have no %s samples: %s. Their label ids stay reserved.",
            dataset,
            len(empty),
            split,
            first_few(empty),
        )


def first_few(items: Sequence[str]) -> str:
    """The first :data:`SHOWN` of ``items``, comma-separated, "..." when there are more."""
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def video_table(
    videos: list[Path],
    labels: np.ndarray,
    audio_index: dict[str, Path] | None = None,
    texts: tuple[str, ...] | None = None,
) -> SampleTable:
    """One sample per video; a same-stem WAV/FLAC file found by :func:`scan` replaces the
    video's own audio track (users who extracted audio once decode faster)."""
    audio = None
    if audio_index:
        audio = tuple(audio_index.get(v.stem) for v in videos)
    return SampleTable(
        labels=np.asarray(labels, dtype=np.int64),
        media=tuple(videos),
        media_of=np.arange(len(videos)),
        media_kind="video",
        texts=texts,
        audio_files=audio,
    )

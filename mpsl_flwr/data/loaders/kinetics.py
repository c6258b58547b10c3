"""Kinetics-Sounds: the Kinetics-400 classes that can be heard, audio-visual.

Arandjelović and Zisserman (2017) picked Kinetics classes recognisable by sound; the
literature uses 30 to 34 of them. The default is the 31 classes that exist in
Kinetics-400 under that definition (the list most audio-visual papers use);
``<data-dir>/classes.txt`` replaces it, e.g. with the exact 30 of a paper. Clips come
from the official Kinetics-400 annotation CSVs; the validation set is the test split
(the usual practice, as the original test labels were withheld). Clips are found by
file name ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under the split's
folder, so both flat and per-class folder trees work; listed clips that are missing
(public copies always lack some) are skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.loaders.common import (
    AUDIO_SUFFIXES,
    VIDEO_SUFFIXES,
    DatasetSpec,
    Files,
    Listed,
    Parsed,
    class_override,
    scan,
    video_table,
    warn_rows,
)

NAME = "kinetics-sounds"
LAYOUT = """
<data-dir>/
  annotations/train.csv          (label,youtube_id,time_start,time_end,...)
  annotations/val.csv            (or validate.csv)
  train/[<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4
  val/[<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4
  classes.txt                    (optional: the class names to use, one per line)
"""
KINETICS_SOUNDS = (
    "blowing nose",
    "blowing out candles",
    "bowling",
    "chopping wood",
    "dribbling basketball",
    "laughing",
    "mowing lawn",
    "playing accordion",
    "playing bagpipes",
    "playing bass guitar",
    "playing clarinet",
    "playing drums",
    "playing guitar",
    "playing harmonica",
    "playing keyboard",
    "playing organ",
    "playing piano",
    "playing saxophone",
    "playing trombone",
    "playing trumpet",
    "playing violin",
    "playing xylophone",
    "ripping paper",
    "shoveling snow",
    "shuffling cards",
    "singing",
    "stomping grapes",
    "tap dancing",
    "tapping guitar",
    "tapping pen",
    "tickling",
)
COLUMNS = ("label", "youtube_id", "time_start", "time_end")
SPLITS = {
    "train": (("annotations/train.csv",), "train"),
    "test": (("annotations/val.csv", "annotations/validate.csv"), "val"),
}


def _clip_name(files: Files, csv_path: Path, line: int, row: dict[str, str]) -> str:
    """The clip's file stem, ``<youtube_id>_<start:06d>_<end:06d>``."""
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError as err:
        raise files.malformed(
            csv_path, f"time_start/time_end must be numbers of seconds ({err})", line
        ) from err
    return f"{row['youtube_id']}_{start:06d}_{end:06d}"


def _warn_cut_labels(
    csv_path: Path, rows: list[tuple[int, dict[str, str]]], class_names: Sequence[str]
) -> None:
    """Warn about rows whose label is a class name cut short: they would be dropped as
    "not a Kinetics-Sounds class" with no word otherwise."""
    prefixes = {c[:k] for c in class_names for k in range(1, len(c))}
    cut = [
        Listed.at(repr(r["label"]), csv_path, n)
        for n, r in rows
        if r["label"] in prefixes and r["label"] not in class_names
    ]
    warn_rows(NAME, "have a label cut short of a class name and were skipped", cut)


def parse(root: Path, missing_files: MissingFiles) -> Parsed:
    files = Files(NAME, LAYOUT, root, missing_files)
    class_names = class_override(files) or KINETICS_SOUNDS
    index = {c: i for i, c in enumerate(class_names)}
    tables = {}
    for split, (csv_names, folder) in SPLITS.items():
        csv_path = files.first_existing(*csv_names)
        videos_dir = files.dir(folder)
        all_rows = files.csv_rows(csv_path, COLUMNS)
        _warn_cut_labels(csv_path, all_rows, class_names)
        numbered = [(n, r) for n, r in all_rows if r["label"] in index]
        names = [_clip_name(files, csv_path, n, r) for n, r in numbered]
        clips, audio = scan(videos_dir, VIDEO_SUFFIXES, AUDIO_SUFFIXES)
        listed = [Listed.at(c, csv_path, n) for c, (n, _) in zip(names, numbered, strict=True)]
        found = files.keep_listed(split, "clips", listed, [c in clips for c in names])
        present = [(c, r) for c, (_, r), ok in zip(names, numbered, found, strict=True) if ok]
        labels = np.array([index[r["label"]] for _, r in present], dtype=np.int64)
        videos = [clips[c] for c, _ in present]
        tables[split] = video_table(videos, labels, audio)
    return Parsed(tuple(class_names), tables["train"], tables["test"])


SPEC = DatasetSpec(
    NAME,
    "classification",
    ("image", "audio"),
    LAYOUT,
    parse,
    image_size=224,
    audio_frames=256,
)

"""UCF101 (Soomro et al., 2012), audio-visual: the 51 action classes that have sound.

Only about half of UCF101's videos carry an audio track, and they belong to 51 of the
101 classes; the other 50 classes are silent and are dropped. Which classes have sound is
read from the files (the first, middle and last training video of each class are
probed, majority wins) unless ``<data-dir>/classes.txt`` names the classes to keep.
Kept classes are numbered in ``classInd.txt`` order. Split: the official split 1
(``trainlist01.txt`` / ``testlist01.txt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.loaders.common import (
    AUDIO_SUFFIXES,
    DatasetSpec,
    Files,
    Listed,
    Parsed,
    class_override,
    scan,
    video_table,
)
from mpsl_flwr.data.video import has_audio

NAME = "ucf101"
LAYOUT = """
<data-dir>/
  UCF-101/<Class>/v_<Class>_g<NN>_c<NN>.avi
  ucfTrainTestlist/classInd.txt   ("<1..101> <Class>" per line)
  ucfTrainTestlist/trainlist01.txt
  ucfTrainTestlist/testlist01.txt
  classes.txt                     (optional: the class names to keep, one per line)
"""
LISTS = {"train": "trainlist01.txt", "test": "testlist01.txt"}


def _class_index(files: Files) -> list[str]:
    path = files.file("ucfTrainTestlist", "classInd.txt")
    names = []
    for number, line in files.numbered_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise files.malformed(path, f"{line!r} is not '<number> <Class>'", number)
        names.append(parts[1])
    return names


def _video_list(files: Files, split: str, known: dict[str, str]) -> list[tuple[str, str, int]]:
    """(class name as in classInd.txt, video path relative to UCF-101/, list line) per
    listed video."""
    path = files.file("ucfTrainTestlist", LISTS[split])
    out = []
    for number, line in files.numbered_lines(path):
        rel = line.split()[0]
        folder = rel.split("/")[0]
        # classInd and the folders disagree on case once (HandstandPushups).
        if "/" not in rel or folder.lower() not in known:
            raise files.malformed(path, f"{rel!r} is not '<Class>/<video>.avi'", number)
        out.append((known[folder.lower()], rel, number))
    return out


def _sounding_classes(
    files: Files, videos_dir: Path, train: list[tuple[str, str, int]]
) -> set[str]:
    by_class: dict[str, list[str]] = {}
    for name, rel, _ in train:
        by_class.setdefault(name, []).append(rel)
    keep = set()
    for name, rels in by_class.items():
        rels = sorted(rels)
        probes = sorted({rels[0], rels[len(rels) // 2], rels[-1]})
        found = [p for p in probes if (videos_dir / p).is_file()]
        if not found:
            continue
        if 2 * sum(has_audio(videos_dir / p) for p in found) > len(found):
            keep.add(name)
    return keep


def parse(root: Path, missing_files: MissingFiles) -> Parsed:
    files = Files(NAME, LAYOUT, root, missing_files)
    videos_dir = files.dir("UCF-101")
    all_classes = _class_index(files)
    known = {c.lower(): c for c in all_classes}
    lists = {s: _video_list(files, s, known) for s in LISTS}
    override = class_override(files)
    if override is not None:
        unknown = [c for c in override if c.lower() not in known]
        if unknown:
            raise files.malformed(root / "classes.txt", f"not UCF101 classes: {unknown}")
        class_names = tuple(known[c.lower()] for c in override)
    else:
        sounding = _sounding_classes(files, videos_dir, lists["train"])
        class_names = tuple(c for c in all_classes if c in sounding)
    if not class_names:
        raise files.missing(f"no class of {videos_dir} has videos with an audio track")
    index = {c: i for i, c in enumerate(class_names)}
    (audio_index,) = scan(videos_dir, AUDIO_SUFFIXES)
    tables = {}
    for split, entries in lists.items():
        kept = [(index[c], rel, n) for c, rel, n in entries if c in index]
        labels = np.array([label for label, _, _ in kept], dtype=np.int64)
        table = video_table([videos_dir / rel for _, rel, _ in kept], labels, audio_index)
        list_file = files.root / "ucfTrainTestlist" / LISTS[split]
        listed = [Listed.at(rel, list_file, n) for _, rel, n in kept]
        tables[split] = files.check_media(table, split, "videos", listed)
    return Parsed(class_names, tables["train"], tables["test"])


SPEC = DatasetSpec(
    NAME,
    "classification",
    ("image", "audio"),
    LAYOUT,
    parse,
    image_size=224,
    audio_frames=256,
)

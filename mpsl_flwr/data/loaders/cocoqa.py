"""COCO-QA (Ren et al., 2015): image + question, the one-word answer as the class.

The official release has, per split, four parallel text files (one entry per line);
``img_ids.txt`` holds COCO image ids: training questions are about COCO train2014
images, test questions about val2014 images. Classes are the distinct answers of both
splits, sorted (430 in the official release).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.lazy import SampleTable
from mpsl_flwr.data.loaders.common import DatasetSpec, Files, Listed, Parsed, label_ids

NAME = "coco-qa"
LAYOUT = """
<data-dir>/
  train/questions.txt  answers.txt  img_ids.txt  types.txt
  test/questions.txt   answers.txt  img_ids.txt  types.txt
  train2014/COCO_train2014_<12-digit id>.jpg   (COCO 2014 train images)
  val2014/COCO_val2014_<12-digit id>.jpg       (COCO 2014 val images)
"""
FIELDS = ("questions", "answers", "img_ids", "types")
IMAGE_FOLDER = {"train": "train2014", "test": "val2014"}


def _read_split(files: Files, split: str) -> dict[str, list[str]]:
    columns = {f: files.lines(files.file(split, f"{f}.txt")) for f in FIELDS}
    counts = {f: len(v) for f, v in columns.items()}
    if len(set(counts.values())) != 1:
        raise files.malformed(
            files.root / split, f"the four files must have one line per question; got {counts}"
        )
    for i, value in enumerate(columns["img_ids"]):
        if not value.isdigit():
            path = files.root / split / "img_ids.txt"
            raise files.malformed(path, f"{value!r} is not a COCO image id", i + 1)
    return columns


def _table(files: Files, split: str, columns, class_names) -> SampleTable:
    folder = IMAGE_FOLDER[split]
    image_dir = files.dir(folder)
    ids, first, media_of = np.unique(
        np.array(columns["img_ids"], dtype=np.int64), return_index=True, return_inverse=True
    )
    media = tuple(image_dir / f"COCO_{folder}_{i:012d}.jpg" for i in ids)
    img_ids = files.root / split / "img_ids.txt"
    listed = [Listed.at(m.name, img_ids, int(k) + 1) for m, k in zip(media, first, strict=True)]
    table = SampleTable(
        labels=label_ids(columns["answers"], class_names),
        media=media,
        media_of=media_of,
        media_kind="image",
        texts=tuple(columns["questions"]),
    )
    return files.check_media(table, split, "images", listed)


def parse(root: Path, missing_files: MissingFiles) -> Parsed:
    files = Files(NAME, LAYOUT, root, missing_files)
    splits = {s: _read_split(files, s) for s in ("train", "test")}
    class_names = tuple(sorted({a for c in splits.values() for a in c["answers"]}))
    return Parsed(
        class_names,
        _table(files, "train", splits["train"], class_names),
        _table(files, "test", splits["test"], class_names),
    )


SPEC = DatasetSpec(
    NAME,
    "classification",
    ("image", "text"),
    LAYOUT,
    parse,
    image_size=224,
    text_length=32,
)

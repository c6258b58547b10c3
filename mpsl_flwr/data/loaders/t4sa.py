"""B-T4SA (Vadicamo et al., 2017): tweet image + tweet text, 3 sentiment classes.

The balanced subset's split files list ``<image path> <label>`` per line (label 0
negative, 1 neutral, 2 positive), image paths relative to the split file's folder and
named ``<tweet id>-<n>.jpg``. The tweet texts come from ``raw_tweets_text.csv``
(columns ``id,text``, all ~3.4 M collected tweets); only the ids the splits use are
kept. URLs are removed from the text: they carry no sentiment and waste tokens.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from mpsl_flwr.config import MissingFiles
from mpsl_flwr.data.lazy import SampleTable
from mpsl_flwr.data.loaders.common import (
    DatasetSpec,
    Files,
    Listed,
    Parsed,
    numbered_rows,
    warn_rows,
)

NAME = "b-t4sa"
LAYOUT = """
<data-dir>/
  raw_tweets_text.csv            (id,text of every T4SA tweet)
  b-t4sa_train.txt               ("data/<...>/<tweet id>-<n>.jpg <0|1|2>" per line)
  b-t4sa_test.txt
  data/<...>/<tweet id>-<n>.jpg  (b-t4sa_imgs.tar, extracted here)
"""
CLASS_NAMES = ("negative", "neutral", "positive")
SPLIT_FILES = {"train": "b-t4sa_train.txt", "test": "b-t4sa_test.txt"}
_URL = re.compile(r"https?://\S+")


def _read_split(files: Files, split: str) -> tuple[list[Path], list[str], np.ndarray, list[Listed]]:
    path = files.file(SPLIT_FILES[split])
    images, tweet_ids, labels, listed = [], [], [], []
    for number, line in files.numbered_lines(path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise files.malformed(path, f"{line!r} is not '<image path> <0|1|2>'", number)
        image = path.parent / parts[0]
        images.append(image)
        listed.append(Listed.at(parts[0], path, number))
        tweet_ids.append(image.stem.split("-")[0])
        labels.append(int(parts[1]))
    return images, tweet_ids, np.array(labels, dtype=np.int64), listed


def _tweet_texts(files: Files, wanted: set[str]) -> dict[str, str]:
    path = files.file("raw_tweets_text.csv")
    texts: dict[str, str] = {}
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if [h.strip().lower() for h in header[:2]] != ["id", "text"]:
            raise files.malformed(path, f"the header must start with 'id,text'; got {header}")
        last = Listed("", "")
        for line, row in numbered_rows(reader):
            last = Listed.at(f"tweet {row[0] if row else '?'}", path, line)
            if len(row) >= 2 and row[0] in wanted:
                texts[row[0]] = " ".join(_URL.sub(" ", row[1]).split())
    if _odd_quotes(path):
        warn_rows(NAME, "open a quote that is never closed (the file looks cut off)", [last])
    return texts


def _odd_quotes(path: Path) -> bool:
    """Whether ``path`` has an odd number of '"': the last quoted field runs to the end of
    the file, which the (lenient) csv reader accepts silently. Escaped quotes come in pairs."""
    count = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            count += chunk.count(b'"')
    return count % 2 == 1


def parse(root: Path, missing_files: MissingFiles) -> Parsed:
    files = Files(NAME, LAYOUT, root, missing_files)
    splits = {s: _read_split(files, s) for s in SPLIT_FILES}
    texts = _tweet_texts(files, {t for _, ids, _, _ in splits.values() for t in ids})
    tables = {}
    for split, (images, ids, labels, listed) in splits.items():
        absent = sorted({t for t in ids if t not in texts})
        if absent:
            raise files.malformed(
                root / "raw_tweets_text.csv",
                f"{len(absent)} tweet ids of the {split} split have no text (e.g. {absent[0]})",
            )
        table = SampleTable(
            labels=labels,
            media=tuple(images),
            media_of=np.arange(len(images)),
            media_kind="image",
            texts=tuple(texts[t] for t in ids),
        )
        tables[split] = files.check_media(table, split, "images", listed)
    return Parsed(CLASS_NAMES, tables["train"], tables["test"])


SPEC = DatasetSpec(
    NAME,
    "classification",
    ("image", "text"),
    LAYOUT,
    parse,
    image_size=224,
    text_length=40,
)

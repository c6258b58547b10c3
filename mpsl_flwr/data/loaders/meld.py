"""MELD (Poria et al., 2019): an utterance's audio + its transcript, 7 emotions.

The official ``MELD.Raw`` release has one CSV per split (``Utterance``, ``Emotion``,
``Dialogue_ID``, ``Utterance_ID``, ...) and one mp4 per utterance named
``dia<D>_utt<U>.mp4``. The audio is the clip's own track (or a same-named WAV/FLAC
file next to it). The transcripts contain mis-decoded characters (``â€™``); CLIP's
tokenizer repairs those (ftfy). Train is ``train``, test is ``test``; ``dev`` is not
used. A few listed clips are absent from the official archives; they are skipped.
"""

from __future__ import annotations

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
    scan,
    video_table,
)

NAME = "meld"
LAYOUT = """
<data-dir>/
  train_sent_emo.csv
  test_sent_emo.csv
  train_splits/dia<D>_utt<U>.mp4
  output_repeated_splits_test/dia<D>_utt<U>.mp4
"""
# The release's own label ids (declare-lab/MELD README, "Labelling"), so that predictions
# compare with its baselines and the papers that use them.
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
COLUMNS = ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID")
SPLITS = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}


def utterance_text(raw: str) -> str:
    """An utterance with runs of whitespace collapsed to one space.

    The CSVs hold cp1252's ellipsis (byte 0x85) as U+0085, which ``str.split`` counts
    as whitespace and would delete: it becomes "..." first.
    """
    return " ".join(raw.replace("\x85", "...").split())


def parse(root: Path, missing_files: MissingFiles) -> Parsed:
    files = Files(NAME, LAYOUT, root, missing_files)
    tables = {}
    for split, (csv_name, folder) in SPLITS.items():
        csv_path = files.file(csv_name)
        clips_dir = files.dir(folder)
        numbered = files.csv_rows(csv_path, COLUMNS)
        rows = [r for _, r in numbered]
        emotions = {r["Emotion"].strip().lower() for r in rows}
        if not emotions <= set(EMOTIONS):
            raise files.malformed(csv_path, f"unknown emotions {sorted(emotions - set(EMOTIONS))}")
        clips, audio = scan(clips_dir, VIDEO_SUFFIXES, AUDIO_SUFFIXES)
        names = [f"dia{r['Dialogue_ID'].strip()}_utt{r['Utterance_ID'].strip()}" for r in rows]
        listed = [Listed.at(c, csv_path, n) for c, (n, _) in zip(names, numbered, strict=True)]
        found = files.keep_listed(split, "clips", listed, [c in clips for c in names])
        present = [(c, r) for c, r, ok in zip(names, rows, found, strict=True) if ok]
        labels = np.array(
            [EMOTIONS.index(r["Emotion"].strip().lower()) for _, r in present], dtype=np.int64
        )
        tables[split] = video_table(
            [clips[n] for n, _ in present],
            labels,
            audio,
            texts=tuple(utterance_text(r["Utterance"]) for _, r in present),
        )
    return Parsed(EMOTIONS, tables["train"], tables["test"])


SPEC = DatasetSpec(
    NAME,
    "classification",
    ("audio", "text"),
    LAYOUT,
    parse,
    audio_frames=512,
    text_length=40,
)

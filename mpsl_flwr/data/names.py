"""Every value of the ``dataset`` run-config key, without importing any loader.

The config validates ``dataset`` when a run config is built, which happens in every
ClientApp message and in the launcher before any process starts; the loaders pull in
decoders and the synthetic generator numpy, so the names live here, on their own.
``tests/test_datasets.py`` checks that they match the loaders and the generator.
"""

from __future__ import annotations

BUILTIN: tuple[str, ...] = ("synthetic-vqa", "synthetic-va", "synthetic-at", "synthetic-retrieval")
"""Generated in process, no files needed (:mod:`mpsl_flwr.data.synthetic`)."""

REAL: tuple[str, ...] = (
    "coco-qa",
    "b-t4sa",
    "mscoco",
    "flickr30k",
    "ucf101",
    "kinetics-sounds",
    "meld",
)
"""Read from the user's files under ``data-dir`` (:mod:`mpsl_flwr.data.loaders`)."""

DATASETS: tuple[str, ...] = BUILTIN + REAL

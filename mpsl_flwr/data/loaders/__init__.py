"""The paper's seven datasets, read from the user's local copies under ``data-dir``.

Nothing is downloaded: each loader reads a dataset's official on-disk format (layouts
in ``docs/datasets.md``). The parsed index is cached per process, since a ClientApp is
rebuilt for every message while its process lives on; media decode lazily per batch.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

from mpsl_flwr.config import DataConfig, MissingFiles
from mpsl_flwr.data.base import DatasetInfo
from mpsl_flwr.data.errors import DatasetNotFoundError, layout_hint
from mpsl_flwr.data.images import normalization
from mpsl_flwr.data.lazy import FileDataset
from mpsl_flwr.data.loaders import cocoqa, karpathy, kinetics, meld, t4sa, ucf101
from mpsl_flwr.data.loaders.common import (
    DatasetSpec,
    Parsed,
    warn_empty_classes,
    warn_rare_classes,
)

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        cocoqa.SPEC,
        t4sa.SPEC,
        karpathy.MSCOCO,
        karpathy.FLICKR30K,
        ucf101.SPEC,
        kinetics.SPEC,
        meld.SPEC,
    )
}
NAMES = tuple(SPECS)
DEFAULT_IMAGE_NORM = "clip"


def data_root(cfg: DataConfig) -> Path:
    """The absolute ``data-dir`` of a real dataset; a clear error when unset or absent."""
    spec = SPECS[cfg.dataset]
    if not cfg.data_dir:
        raise DatasetNotFoundError(
            f"Dataset '{spec.name}' is read from local files: set run-config 'data-dir' "
            f"to its folder (an absolute path).\n{layout_hint(spec.name, spec.layout)}"
        )
    root = Path(cfg.data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{spec.name}: data-dir {root} does not exist.\n{layout_hint(spec.name, spec.layout)}"
        )
    return root


@lru_cache(maxsize=4)
def open_dataset(name: str, root: Path, missing_files: MissingFiles) -> Parsed:
    """Check the layout under ``root`` and parse the index of both splits (cached)."""
    parsed = SPECS[name].parse(root, missing_files)
    if parsed.class_names:
        warn_empty_classes(name, "train", parsed.train.labels, parsed.class_names)
        warn_empty_classes(name, "test", parsed.test.labels, parsed.class_names)
        warn_rare_classes(name, parsed.train.labels, parsed.class_names)
    return parsed


def info(cfg: DataConfig) -> DatasetInfo:
    """:class:`DatasetInfo` of a real dataset: sizes from ``cfg`` or the dataset's defaults."""
    spec = SPECS[cfg.dataset]
    parsed = open_dataset(spec.name, data_root(cfg), cfg.missing_files)
    mean, std = normalization(cfg.image_norm, DEFAULT_IMAGE_NORM)
    mods = spec.modalities
    return DatasetInfo(
        spec.name,
        spec.kind,
        mods,
        len(parsed.class_names),
        parsed.class_names,
        image_size=(cfg.image_size or spec.image_size) if "image" in mods else 0,
        audio_frames=(cfg.audio_frames or spec.audio_frames) if "audio" in mods else 0,
        text_length=(cfg.text_length or spec.text_length) if "text" in mods else 0,
        image_mean=mean,
        image_std=std,
    )


def load(cfg: DataConfig, split: str) -> FileDataset:
    """The lazily decoded ``"train"`` or ``"test"`` split of a real dataset."""
    spec = SPECS[cfg.dataset]
    parsed = open_dataset(spec.name, data_root(cfg), cfg.missing_files)
    table = parsed.train if split == "train" else parsed.test
    proxy = None
    if spec.proxy_labels is not None:
        proxy = partial(spec.proxy_labels, clusters=cfg.retrieval_clusters, seed=cfg.data_seed)
    return FileDataset(info(cfg), table, proxy)

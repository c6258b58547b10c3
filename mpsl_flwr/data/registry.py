"""Dataset lookup by the ``dataset`` run-config key, cached per process.

A ClientApp is rebuilt for every message, but its Python process lives on (a Ray actor
in simulation), so the generated data, or a real dataset's parsed index and decoded
media cache, is kept here once per process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr_datasets.partitioner import Partitioner

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data import loaders, synthetic
from mpsl_flwr.data.base import DatasetInfo, MultimodalDataset
from mpsl_flwr.data.partition import (
    Scheme,
    build_partitioner,
    dirichlet_partitions,
    group_partitions,
    unit_labels,
)

BUILTIN = synthetic.TASKS
REAL = loaders.NAMES


def dataset_names() -> tuple[str, ...]:
    """Every value the ``dataset`` key accepts."""
    return BUILTIN + REAL


def dataset_info(cfg: RunConfig) -> DatasetInfo:
    """Task kind, modalities and input sizes (real data: parses the index, no media)."""
    _check_name(cfg.dataset)
    if cfg.dataset in REAL:
        return loaders.info(cfg)
    return synthetic.info_for(
        cfg.dataset, cfg.image_size, cfg.audio_frames, cfg.text_length, cfg.image_norm
    )


def load_split(cfg: RunConfig, split: str) -> MultimodalDataset:
    """The ``"train"`` or ``"test"`` split named by ``cfg`` (cached per process)."""
    _check_name(cfg.dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    if cfg.dataset in REAL:
        return _load_real(_data_fields(cfg), split)
    size = cfg.synthetic_train_size if split == "train" else cfg.synthetic_test_size
    return _generate(
        synthetic.SyntheticSpec(
            task=cfg.dataset,
            size=size,
            seed=cfg.data_seed,
            split=split,
            difficulty=cfg.synthetic_difficulty,
            image_size=cfg.image_size or synthetic.DEFAULT_IMAGE_SIZE,
            audio_frames=cfg.audio_frames,
            text_length=cfg.text_length,
            image_norm=cfg.image_norm,
        )
    )


def partition_scheme(cfg: RunConfig, info: DatasetInfo) -> Scheme:
    """Dirichlet over labels for classification; ``retrieval-partition`` for retrieval."""
    if info.kind == "retrieval" and cfg.retrieval_partition == "iid":
        return "iid"
    return "dirichlet"


def client_partition(cfg: RunConfig, client_id: int, num_clients: int) -> np.ndarray:
    """Training-set indices of logical client ``client_id``.

    Classification: Dirichlet over labels. Retrieval: whole images (with all their
    captions) split IID or Dirichlet over the dataset's pseudo-label.
    """
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client id {client_id} outside [0, {num_clients}).")
    train = load_split(cfg, "train")
    if train.info.kind == "retrieval":
        scheme = partition_scheme(cfg, train.info)
        # IID ignores the pseudo-label; don't compute it (k-means over all captions).
        proxy = train.partition_labels if scheme == "dirichlet" else np.zeros(len(train))
        parts = group_partitions(
            train.labels,
            proxy,
            num_clients,
            scheme,
            cfg.dirichlet_alpha,
            cfg.seed,
            cfg.min_partition_size,
        )
    else:
        parts = dirichlet_partitions(
            train.partition_labels,
            num_clients,
            cfg.dirichlet_alpha,
            cfg.seed,
            cfg.min_partition_size,
        )
    return parts[client_id]


def partitioner(cfg: RunConfig, num_clients: int) -> Partitioner:
    """The flwr-datasets partitioner behind :func:`client_partition`, with its dataset.

    Its rows are samples (classification) or images (retrieval); column ``label`` holds
    the class or the pseudo-label, named where the dataset has class names.
    """
    train = load_split(cfg, "train")
    labels = train.partition_labels
    names = train.info.class_names or None
    if train.info.kind == "retrieval":
        labels = unit_labels(train.labels, labels)
        names = None
    return build_partitioner(
        labels,
        num_clients,
        partition_scheme(cfg, train.info),
        cfg.dirichlet_alpha,
        cfg.seed,
        cfg.min_partition_size,
        label_names=names,
    )


def _data_fields(cfg: RunConfig) -> RunConfig:
    """``cfg`` with only the keys that change a real split's content kept (cache key)."""
    keep = (
        "dataset",
        "data_dir",
        "data_seed",
        "image_size",
        "audio_frames",
        "text_length",
        "image_norm",
        "retrieval_clusters",
    )
    return RunConfig().replace(**{k: getattr(cfg, k) for k in keep})


@lru_cache(maxsize=4)
def _load_real(cfg: RunConfig, split: str) -> MultimodalDataset:
    return loaders.load(cfg, split)


@lru_cache(maxsize=4)
def _generate(spec: synthetic.SyntheticSpec) -> MultimodalDataset:
    return synthetic.generate(spec)


def _check_name(name: str) -> None:
    if name not in dataset_names():
        raise ValueError(
            f"Unknown dataset '{name}'. Run-config key 'dataset' accepts: "
            f"{', '.join(dataset_names())}."
        )

"""Dataset lookup by the ``dataset`` run-config key, cached per process.

A ClientApp is rebuilt for every message, but its Python process lives on (a Ray actor
in simulation), so the generated data, or a real dataset's parsed index and decoded
media cache, is kept here once per process. Everything here takes the data part of the
run config (``RunConfig.data``); partitioning also takes the run's ``seed``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from flwr_datasets.partitioner import Partitioner

from mpsl_flwr.config import DataConfig, RunConfig, choice_error
from mpsl_flwr.data import loaders, synthetic
from mpsl_flwr.data.base import DatasetInfo, MultimodalDataset
from mpsl_flwr.data.partition import (
    Scheme,
    build_partitioner,
    dirichlet_partitions,
    group_partitions,
    unit_labels,
)
from mpsl_flwr.tasks import task_of

BUILTIN = synthetic.TASKS
REAL = loaders.NAMES


def dataset_names() -> tuple[str, ...]:
    """Every value the ``dataset`` key accepts."""
    return BUILTIN + REAL


def dataset_info(data: DataConfig) -> DatasetInfo:
    """Task kind, modalities and input sizes (real data: parses the index, no media)."""
    _check_name(data.dataset)
    if data.dataset in REAL:
        return loaders.info(data)
    return synthetic.info_for(
        data.dataset, data.image_size, data.audio_frames, data.text_length, data.image_norm
    )


def load_split(data: DataConfig, split: str) -> MultimodalDataset:
    """The ``"train"`` or ``"test"`` split named by ``data`` (cached per process), or a
    built-in task's ``"pretrain"`` split (``synthetic-train-size`` samples of a stream of
    their own: what ``mpsl-pretrain`` trains on)."""
    _check_name(data.dataset)
    if split not in synthetic.SPLITS or (split == "pretrain" and data.dataset in REAL):
        raise ValueError(
            f"split must be 'train' or 'test' (or 'pretrain' for a built-in dataset); got "
            f"{split!r} for dataset {data.dataset!r}."
        )
    if data.dataset in REAL:
        return _load_real(_content_fields(data), split)
    size = data.synthetic_test_size if split == "test" else data.synthetic_train_size
    return _generate(
        synthetic.SyntheticSpec(
            task=data.dataset,
            size=size,
            seed=data.data_seed,
            split=split,
            difficulty=data.synthetic_difficulty,
            image_size=data.image_size or synthetic.DEFAULT_IMAGE_SIZE,
            audio_frames=data.audio_frames,
            text_length=data.text_length,
            image_norm=data.image_norm,
        )
    )


def train_size(data: DataConfig) -> int:
    """Samples in the training split: a built-in task's configured size, or the length
    of a real dataset's parsed index (no media is read)."""
    if data.dataset in REAL:
        return len(load_split(data, "train"))
    return data.synthetic_train_size


def partition_scheme(data: DataConfig, info: DatasetInfo) -> Scheme:
    """Dirichlet over labels for classification; ``retrieval-partition`` for retrieval."""
    if task_of(info).labels_are_pair_ids and data.retrieval_partition == "iid":
        return "iid"
    return "dirichlet"


def client_partition(
    data: DataConfig, client_id: int, num_clients: int, *, seed: int
) -> np.ndarray:
    """Training-set indices of logical client ``client_id`` (the run's ``seed``).

    Classification: Dirichlet over labels. Retrieval: whole images (with all their
    captions) split IID or Dirichlet over the dataset's pseudo-label.
    """
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client id {client_id} outside [0, {num_clients}).")
    train = load_split(data, "train")
    if task_of(train.info).labels_are_pair_ids:
        scheme = partition_scheme(data, train.info)
        # IID ignores the pseudo-label; don't compute it (k-means over all captions).
        proxy = train.partition_labels if scheme == "dirichlet" else np.zeros(len(train))
        parts = group_partitions(
            train.labels,
            proxy,
            num_clients,
            scheme,
            data.dirichlet_alpha,
            seed,
            data.min_partition_size,
        )
    else:
        parts = dirichlet_partitions(
            train.partition_labels,
            num_clients,
            data.dirichlet_alpha,
            seed,
            data.min_partition_size,
        )
    return parts[client_id]


def partitioner(data: DataConfig, num_clients: int, *, seed: int) -> Partitioner:
    """The flwr-datasets partitioner behind :func:`client_partition`, with its dataset.

    Its rows are samples (classification) or images (retrieval); column ``label`` holds
    the class or the pseudo-label, named where the dataset has class names.
    """
    train = load_split(data, "train")
    labels = train.partition_labels
    names = train.info.class_names or None
    if task_of(train.info).labels_are_pair_ids:
        labels = unit_labels(train.labels, labels)
        names = None
    return build_partitioner(
        labels,
        num_clients,
        partition_scheme(data, train.info),
        data.dirichlet_alpha,
        seed,
        data.min_partition_size,
        label_names=names,
    )


def _content_fields(data: DataConfig) -> DataConfig:
    """``data`` with only the keys that change a real split's content kept (cache key)."""
    keep = (
        "dataset",
        "data_dir",
        "data_seed",
        "image_size",
        "audio_frames",
        "text_length",
        "image_norm",
        "missing_files",
        "retrieval_clusters",
    )
    return RunConfig().replace(**{k: getattr(data, k) for k in keep}).data


@lru_cache(maxsize=4)
def _load_real(data: DataConfig, split: str) -> MultimodalDataset:
    return loaders.load(data, split)


@lru_cache(maxsize=4)
def _generate(spec: synthetic.SyntheticSpec) -> MultimodalDataset:
    return synthetic.generate(spec)


def _check_name(name: str) -> None:
    if name not in dataset_names():
        raise choice_error("dataset", name, dataset_names())

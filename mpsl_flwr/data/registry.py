"""Dataset lookup by the ``dataset`` run-config key, cached per process.

A ClientApp is rebuilt for every message, but its Python process lives on (a Ray actor
in simulation), so the generated or decoded data is kept here once per process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data import synthetic
from mpsl_flwr.data.base import DatasetInfo, MultimodalDataset
from mpsl_flwr.data.partition import dirichlet_partitions

BUILTIN = synthetic.TASKS


def dataset_names() -> tuple[str, ...]:
    """Every value the ``dataset`` key accepts."""
    return BUILTIN


def dataset_info(cfg: RunConfig) -> DatasetInfo:
    """Task kind, modalities and input sizes, without loading any data."""
    _check_name(cfg.dataset)
    return synthetic.info_for(
        cfg.dataset, cfg.image_size, cfg.audio_frames, cfg.text_length, cfg.image_norm
    )


def load_split(cfg: RunConfig, split: str) -> MultimodalDataset:
    """The ``"train"`` or ``"test"`` split named by ``cfg`` (cached per process)."""
    _check_name(cfg.dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
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


def client_partition(cfg: RunConfig, client_id: int, num_clients: int) -> np.ndarray:
    """Training-set indices of logical client ``client_id`` (Dirichlet over labels)."""
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client id {client_id} outside [0, {num_clients}).")
    train = load_split(cfg, "train")
    parts = dirichlet_partitions(
        train.partition_labels,
        num_clients,
        cfg.dirichlet_alpha,
        cfg.seed,
        cfg.min_partition_size,
    )
    return parts[client_id]


@lru_cache(maxsize=4)
def _generate(spec: synthetic.SyntheticSpec) -> MultimodalDataset:
    return synthetic.generate(spec)


def _check_name(name: str) -> None:
    if name not in dataset_names():
        raise ValueError(
            f"Unknown dataset '{name}'. Run-config key 'dataset' accepts: "
            f"{', '.join(dataset_names())}."
        )

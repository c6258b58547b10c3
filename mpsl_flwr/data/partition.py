"""Partitioning (flwr-datasets' Dirichlet and IID partitioners) and deterministic batch order.

Classification splits on labels; retrieval, which has none, splits whole images (each
with its captions) IID or by Dirichlet over a pseudo-label (see ``group_partitions``).

Every strategy draws its batches through :func:`batch_indices`, so MPSL, FedAvg and
centralized training see the same sample order for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from mpsl_flwr.config import ConfigError

Scheme = Literal["dirichlet", "iid"]


def build_partitioner(
    labels: np.ndarray,
    num_partitions: int,
    scheme: Scheme,
    alpha: float,
    seed: int,
    min_partition_size: int = 2,
    label_names: Sequence[str] | None = None,
) -> Partitioner:
    """A flwr-datasets partitioner over rows ``label``/``idx``, its dataset assigned.

    ``dirichlet``: Dirichlet(alpha) label skew. ``iid``: the rows shuffled with ``seed``,
    then cut into equal contiguous shares. ``label_names`` only make plots readable.
    """
    features = datasets.Features(
        {
            "label": datasets.ClassLabel(names=list(label_names))
            if label_names
            else datasets.Value("int64"),
            "idx": datasets.Value("int64"),
        }
    )
    order = np.arange(len(labels))
    if scheme == "iid":  # IidPartitioner cuts contiguous shares: shuffle the rows first
        order = np.random.default_rng(seed).permutation(len(labels))
    table = datasets.Dataset.from_dict(
        {"label": [int(x) for x in np.asarray(labels)[order]], "idx": order}, features=features
    )
    partitioner: Partitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = table
    return partitioner


def dirichlet_partitions(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 2,
) -> list[np.ndarray]:
    """Indices of each of ``num_partitions`` Dirichlet(alpha) partitions over ``labels``."""
    return list(
        _cached_partitions(
            _array_key(labels), num_partitions, "dirichlet", float(alpha), seed, min_partition_size
        )
    )


def group_partitions(
    groups: np.ndarray,
    group_labels: np.ndarray,
    num_partitions: int,
    scheme: Scheme,
    alpha: float,
    seed: int,
    min_partition_size: int = 2,
) -> list[np.ndarray]:
    """Partitions of samples that keep each group whole (retrieval: an image with its
    captions). ``groups[i]`` is sample ``i``'s group; the groups are partitioned by
    ``scheme`` over ``group_labels[i]`` (constant within a group), then expanded."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    per_group = np.asarray(group_labels)[first]
    parts = _cached_partitions(
        _array_key(per_group), num_partitions, scheme, float(alpha), seed, min_partition_size
    )
    owner = np.empty(len(first), dtype=np.int64)
    for k, part in enumerate(parts):
        owner[part] = k
    sample_owner = owner[inverse.reshape(-1)]
    return [np.flatnonzero(sample_owner == k) for k in range(num_partitions)]


def unit_labels(groups: np.ndarray, group_labels: np.ndarray) -> np.ndarray:
    """One label per group (in sorted group order), as :func:`group_partitions` uses."""
    _, first = np.unique(groups, return_index=True)
    return np.asarray(group_labels)[first]


def _array_key(labels: np.ndarray) -> tuple[str, bytes]:
    arr = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    return arr.dtype.str, arr.tobytes()


@lru_cache(maxsize=8)
def _cached_partitions(
    key: tuple[str, bytes],
    num_partitions: int,
    scheme: Scheme,
    alpha: float,
    seed: int,
    min_size: int,
) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(key[1], dtype=np.dtype(key[0]))
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1; got {num_partitions}.")
    if num_partitions == 1:
        return (np.arange(len(labels)),)
    need = num_partitions * (min_size if scheme == "dirichlet" else 1)
    if len(labels) < need:
        raise ConfigError(
            f"{len(labels)} training samples cannot fill {num_partitions} partitions of at "
            f"least {need // num_partitions} (run-config 'min-partition-size'): use more data "
            "or fewer clients."
        )
    partitioner = build_partitioner(labels, num_partitions, scheme, alpha, seed, min_size)
    try:
        return tuple(
            np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
            for i in range(num_partitions)
        )
    except ValueError as err:
        raise ValueError(
            f"Dirichlet partitioning of {len(labels)} samples into {num_partitions} "
            f"partitions (alpha={alpha}, min-partition-size={min_size}) failed: {err} "
            "Lower 'min-partition-size', raise 'dirichlet-alpha' or use fewer clients."
        ) from err


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Number of batches of ``batch_size`` in one pass (the last one may be short)."""
    return math.ceil(num_samples / batch_size) if num_samples else 0


def batch_indices(num_samples: int, epoch: int, seed: int, offset: int, size: int) -> np.ndarray:
    """Positions (into a partition of ``num_samples``) of the batch ``[offset, offset+size)``
    of ``epoch``'s order: a fresh permutation per epoch drawn from ``(seed, epoch)``.

    Empty once the partition is exhausted; the last batch may be short.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return perm[offset : offset + size]


def client_seed(seed: int, client_id: int) -> int:
    """Seed of a logical client's shuffle; client 0 of 1 shuffles as centralized does."""
    return seed * 1_000_003 + client_id


def client_batch_size(batch_size: int, num_clients: int) -> int:
    """``b_n = ceil(B / N)``: each of N clients' share of the global batch B."""
    return math.ceil(batch_size / max(1, num_clients))

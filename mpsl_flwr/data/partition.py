"""Partitioning (flwr-datasets' Dirichlet partitioner) and deterministic batch order.

Every strategy draws its batches through :func:`batch_indices`, so MPSL, FedAvg and
centralized training see the same sample order for the same seed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner


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
            tuple(int(x) for x in labels), num_partitions, float(alpha), seed, min_partition_size
        )
    )


@lru_cache(maxsize=8)
def _cached_partitions(
    labels: tuple[int, ...], num_partitions: int, alpha: float, seed: int, min_size: int
) -> tuple[np.ndarray, ...]:
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1; got {num_partitions}.")
    if num_partitions == 1:
        return (np.arange(len(labels)),)
    if len(labels) < num_partitions * min_size:
        raise ValueError(
            f"{len(labels)} training samples cannot fill {num_partitions} partitions of at "
            f"least {min_size} (run-config 'min-partition-size'): use more data or fewer "
            "clients."
        )
    table = datasets.Dataset.from_dict({"label": list(labels), "idx": range(len(labels))})
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
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

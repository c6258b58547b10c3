"""The true labels of recorded batches, read from the partitions: for scoring only.

The attacks never see these. They are what a client's :class:`~mpsl_flwr.split_client.
SplitClient` would draw for a batch plan (its partition, its seeded per-epoch order:
:func:`~mpsl_flwr.data.partition.batch_indices`), read here outside the protocol so that
an attack's predictions can be scored sample by sample.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpsl_flwr.config import DataConfig
from mpsl_flwr.data.partition import batch_indices, client_seed
from mpsl_flwr.data.registry import client_partition, load_split
from mpsl_flwr.privacy.recording import Observation
from mpsl_flwr.protocol.mpsl import BatchPlan


class LabelOracle:
    """Labels of any client's batch plan, for a run's data, seed and client count."""

    def __init__(self, data: DataConfig, num_clients: int, seed: int) -> None:
        self.data = data
        self.num_clients = num_clients
        self.seed = seed
        self.labels = load_split(data, "train").labels
        self._partitions: dict[int, np.ndarray] = {}

    def partition(self, cid: int) -> np.ndarray:
        """Training-set indices of client ``cid`` (cached)."""
        if cid not in self._partitions:
            self._partitions[cid] = client_partition(
                self.data, cid, self.num_clients, seed=self.seed
            )
        return self._partitions[cid]

    def of(self, cid: int, plan: BatchPlan) -> np.ndarray:
        """The labels of client ``cid``'s batch ``plan``, in the order it drew them."""
        part = self.partition(cid)
        positions = batch_indices(
            len(part), plan.epoch, client_seed(self.seed, cid), plan.offset, plan.size
        )
        return self.labels[part[positions]]


def true_labels(oracle: LabelOracle, observations: Iterable[Observation]) -> np.ndarray:
    """The labels of every row of ``observations``, concatenated in their order (the
    order of :func:`~mpsl_flwr.privacy.recording.stacked`)."""
    blocks = []
    for o in observations:
        y = oracle.of(o.cid, o.plan)
        if len(y) != o.num_samples:
            raise ValueError(
                f"client {o.cid}, epoch {o.epoch} step {o.step}: {o.num_samples} recorded rows "
                f"but its plan {o.plan} draws {len(y)} samples; the oracle needs the run's "
                "data config, client count and seed."
            )
        blocks.append(y)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)

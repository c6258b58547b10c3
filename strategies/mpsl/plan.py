"""Where every client stands within an MPSL epoch.

A client draws its batches as consecutive slices of a seeded per-epoch permutation of
its partition, ``b_n = ceil(B / N)`` samples at a time. :class:`StepPlan` owns the
offsets into those permutations, the activations that arrived early (prefetched with
the previous step's backward reply), and the samples each client has trained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor

from mpsl_flwr.protocol.mpsl import BatchPlan, step_group

Activations = dict[str, Tensor]


@dataclass
class StepPlan:
    """Batch offsets, prefetched activations and samples seen, per client, for one epoch."""

    epoch: int
    batch_size: int  # b_n
    sizes: dict[int, int]  # partition size per client
    step: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    pending: dict[int, tuple[BatchPlan, Activations]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = {cid: 0 for cid in self.sizes}
        self.seen = {cid: 0 for cid in self.sizes}

    @property
    def group(self) -> str:
        """The message group id of this step's legs."""
        return step_group(self.epoch, self.step)

    def due(self, cids: Iterable[int] | None = None) -> dict[int, BatchPlan]:
        """The next batch of every client (or of ``cids``) that has data left."""
        return {
            cid: BatchPlan(
                self.epoch,
                self.offsets[cid],
                min(self.batch_size, self.sizes[cid] - self.offsets[cid]),
            )
            for cid in (self.sizes if cids is None else cids)
            if self.offsets[cid] < self.sizes[cid]
        }

    def take_prefetched(
        self, plans: dict[int, BatchPlan], void: set[int]
    ) -> dict[int, Activations]:
        """Activations that arrived early for exactly these plans (``void``: not usable)."""
        pending, self.pending = self.pending, {}
        return {
            cid: acts
            for cid, (plan, acts) in pending.items()
            if plans.get(cid) == plan and cid not in void
        }

    def advance(self, trained: dict[int, BatchPlan]) -> None:
        """These batches entered the server's update: move past them."""
        for cid, plan in trained.items():
            self.offsets[cid] += plan.size
            self.seen[cid] += plan.size

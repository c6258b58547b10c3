"""Per-step timings of MPSL: where a step's wall time goes, leg by leg.

:class:`LegTiming` is one exchange (wall time, payload bytes each way, each node's
reported handler compute); :class:`StepTiming` is one step: its wall time, the server's
compute (forward, backward and optimizer step) and its legs. ``transport-s`` is what
compute does not explain: the step's wall time minus the server's compute and, per leg,
the slowest node's compute (nodes of a leg run side by side). The strategy writes one
row per step to ``steps.jsonl`` in the run directory (:meth:`StepTiming.to_row`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LegTiming:
    """One leg's exchange: wall time, payload bytes and the nodes' compute times."""

    leg: str
    wall_s: float
    bytes_down: int
    bytes_up: int
    compute_s: list[float] = field(default_factory=list)  # one per node that reported

    def to_row(self) -> dict[str, Any]:
        return {
            "wall-s": round(self.wall_s, 6),
            "bytes-down": self.bytes_down,
            "bytes-up": self.bytes_up,
            "nodes": len(self.compute_s),
            "client-compute-sum-s": round(sum(self.compute_s), 6),
            "client-compute-max-s": round(max(self.compute_s, default=0.0), 6),
        }


@dataclass
class StepTiming:
    """One MPSL step: wall time, server compute, samples and its legs in order."""

    epoch: int
    step: int
    wall_s: float = 0.0
    server_s: float = 0.0
    samples: int = 0
    legs: list[LegTiming] = field(default_factory=list)

    @property
    def client_sum_s(self) -> float:
        """Compute of every node in every leg, added up."""
        return sum(sum(leg.compute_s) for leg in self.legs)

    @property
    def client_critical_s(self) -> float:
        """Per leg the slowest node's compute, added up over the legs."""
        return sum(max(leg.compute_s, default=0.0) for leg in self.legs)

    def to_row(self) -> dict[str, Any]:
        """The ``steps.jsonl`` row of this step."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "samples": self.samples,
            "wall-s": round(self.wall_s, 6),
            "server-compute-s": round(self.server_s, 6),
            "client-compute-sum-s": round(self.client_sum_s, 6),
            "client-compute-max-s": round(self.client_critical_s, 6),
            "transport-s": round(self.wall_s - self.server_s - self.client_critical_s, 6),
            "bytes-down": sum(leg.bytes_down for leg in self.legs),
            "bytes-up": sum(leg.bytes_up for leg in self.legs),
            "legs": [{"leg": leg.leg, **leg.to_row()} for leg in self.legs],
        }

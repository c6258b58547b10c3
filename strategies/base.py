"""What every strategy's runner offers the ServerApp, the benchmarks and the tests."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from mpsl_flwr.checkpoint import Checkpointing
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.protocol.transport import TrafficMeter
from strategies.reporting import EpochEndFn, EvaluateFn


class Runner(Protocol):
    """Built from an :class:`Experiment`; trains ``head`` and ``server_model`` for
    ``epochs`` epochs (rounds) and reports every epoch through ``on_epoch_end``."""

    head: ClientHead
    server_model: ServerModel
    meter: TrafficMeter  # bytes of every message it sent and received

    def __init__(self, exp: Experiment) -> None: ...

    @property
    def num_clients(self) -> int:
        """Logical clients taking part (known once discovery has run)."""
        ...

    def start(
        self,
        grid: Grid | None,
        evaluate_fn: EvaluateFn | None = None,
        on_epoch_end: EpochEndFn | None = None,
        checkpointing: Checkpointing | None = None,
    ) -> Result:
        """Train; ``grid`` is None only for a strategy that needs none (centralized)."""
        ...


@runtime_checkable
class StepTimed(Protocol):
    """A runner that times its steps: one row per step, taken (and emptied) by the
    runner at each epoch's end and appended to the run's ``steps.jsonl``."""

    step_times: list[dict[str, Any]]


def require_grid(grid: Grid | None, strategy: str) -> Grid:
    """The grid a federated strategy runs on; a clear error when there is none."""
    if grid is None:
        raise ValueError(f"strategy={strategy} needs a Flower grid: run it with `flwr run`.")
    return grid

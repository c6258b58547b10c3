"""What an epoch (or round) measured, and the history row every strategy writes for it.

:class:`EpochStats` sums what training sees step by step (loss, samples, correct
predictions, clients per step, dropped client-steps); :class:`EpochRecord` is one row
of ``history.jsonl``/``history.csv``. Every strategy writes the same columns, so runs
of different strategies line up column for column; a column a strategy does not
measure (steps in FedAvg, train accuracy in retrieval) is ``null`` in JSON and empty
in CSV, never missing.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the run launcher reads histories without importing torch
    from mpsl_flwr.tasks import Task

TEST_PREFIX = "test-"


@dataclass
class EpochStats:
    """Sums over one epoch of training, on one side or over all clients."""

    loss_sum: float = 0.0
    samples: int = 0
    correct: int = 0
    steps: int = 0
    clients_per_step: list[int] = field(default_factory=list)
    dropped: int = 0

    @property
    def loss(self) -> float:
        """Mean training loss per sample."""
        return self.loss_sum / max(1, self.samples)

    @property
    def accuracy(self) -> float:
        """Fraction of correct training predictions."""
        return self.correct / max(1, self.samples)

    @property
    def mean_clients_per_step(self) -> float:
        """Clients that took part in a step, on average over the steps."""
        return sum(self.clients_per_step) / max(1, len(self.clients_per_step))


@dataclass(frozen=True)
class EpochRecord(Mapping[str, Any]):
    """One history row: the training side of an epoch, its traffic, timing and test metrics.

    It reads like the row it becomes (``record["train-loss"]``), with every column
    present, ``None`` where not measured.
    """

    epoch: int
    train_loss: float
    train_accuracy: float | None = None
    steps: int | None = None
    mean_clients_per_step: float | None = None
    dropped_client_steps: int | None = None
    samples_trained: int | None = None
    mb_down_per_client: float | None = None
    mb_up_per_client: float | None = None
    epoch_time_s: float | None = None
    wall_time_s: float | None = None
    test: Mapping[str, float] = field(default_factory=dict)  # "test-<metric>" -> value

    @classmethod
    def of_training(
        cls, epoch: int, task: Task, loss: float, accuracy: float, **fields: Any
    ) -> EpochRecord:
        """A record whose train accuracy is kept only where ``task`` reports one (a
        retrieval step has nothing to be right about)."""
        return cls(
            epoch=epoch,
            train_loss=loss,
            train_accuracy=accuracy if task.reports_train_accuracy else None,
            **fields,
        )

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The columns every record has, before its test metrics."""
        return tuple(_column(f.name) for f in dataclasses.fields(cls) if f.name != "test")

    def with_test(self, metrics: Mapping[str, float]) -> EpochRecord:
        """A copy with the test metrics (``test-`` keys) added."""
        return dataclasses.replace(self, test={**self.test, **metrics})

    def replace(self, **changes: Any) -> EpochRecord:
        """A copy with some fields (snake_case) changed."""
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """The history row: every column, then the test metrics."""
        row = {
            _column(f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "test"
        }
        return {**row, **self.test}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EpochRecord:
        """Parse a row of ``history.jsonl`` (JSON values, ``None`` for null) or of
        ``history.csv`` (strings, ``""`` for null)."""
        by_column = {_column(f.name): f.name for f in dataclasses.fields(cls) if f.name != "test"}
        hints = _hints()
        values: dict[str, Any] = {}
        test: dict[str, float] = {}
        for key, value in row.items():
            if key.startswith(TEST_PREFIX):
                if value is not None and value != "":  # CSV: a row evaluated less
                    test[key] = float(value) if isinstance(value, str) else value
            elif key in by_column:
                name = by_column[key]
                values[name] = _parse(value, hints[name])
            else:
                raise KeyError(f"history column {key!r} is not one of {', '.join(by_column)}.")
        return cls(**values, test=test)

    def __getitem__(self, key: str) -> Any:
        return self.to_row()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_row())

    def __len__(self) -> int:
        return len(self.to_row())


def _column(name: str) -> str:
    return name.replace("_", "-")


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(EpochRecord)


def _parse(value: Any, hint: Any) -> Any:
    """A CSV string as the field's type; JSON values and ``None`` as they are."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    return int(value) if int in typing.get_args(hint) or hint is int else float(value)

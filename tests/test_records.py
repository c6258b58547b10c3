"""One history row for every strategy: EpochStats, EpochRecord and how they are written."""

from __future__ import annotations

import csv
import json

import pytest

from clients.client_app import app as client_app
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.records import EpochRecord, EpochStats
from mpsl_flwr.results import HISTORY_CSV, HISTORY_JSONL, RunRecorder, format_table
from mpsl_flwr.tasks import CLASSIFICATION, RETRIEVAL
from strategies.centralized import Centralized
from strategies.fedavg import FederatedAveraging
from strategies.mpsl import MPSL

COLUMNS = (
    "epoch",
    "train-loss",
    "train-accuracy",
    "steps",
    "mean-clients-per-step",
    "dropped-client-steps",
    "samples-trained",
    "mb-down-per-client",
    "mb-up-per-client",
    "epoch-time-s",
    "wall-time-s",
)


def test_epoch_stats_means_survive_an_empty_epoch():
    stats = EpochStats()
    assert (stats.loss, stats.accuracy, stats.mean_clients_per_step) == (0.0, 0.0, 0.0)
    stats = EpochStats(loss_sum=3.0, samples=4, correct=1, clients_per_step=[3, 2])
    assert (stats.loss, stats.accuracy, stats.mean_clients_per_step) == (0.75, 0.25, 2.5)


def test_record_has_every_column_with_nulls_for_what_was_not_measured():
    record = EpochRecord.of_training(2, RETRIEVAL, 0.5, 0.9, samples_trained=10)
    row = record.to_row()
    assert tuple(row) == COLUMNS == EpochRecord.columns()
    assert row["train-accuracy"] is None  # retrieval has no train accuracy
    assert row["steps"] is None and row["samples-trained"] == 10
    assert record["train-loss"] == 0.5 and set(record) == set(row)
    with_test = record.with_test({"test-rsum": 1.5})
    assert list(with_test.to_row())[-1] == "test-rsum" and with_test.test == {"test-rsum": 1.5}
    assert EpochRecord.of_training(1, CLASSIFICATION, 0.5, 0.9).train_accuracy == 0.9


def test_a_row_with_an_unknown_column_is_refused():
    with pytest.raises(KeyError, match="not one of"):
        EpochRecord.from_row({"epoch": 1, "train-loss": 0.1, "train-los": 0.2})


def test_history_round_trips_through_jsonl_and_csv(tiny):
    cfg = tiny()
    recorder = RunRecorder(cfg, headline="test-accuracy")
    written = [
        EpochRecord.of_training(
            1,
            CLASSIFICATION,
            0.123456789012345,
            0.5,
            steps=3,
            samples_trained=48,
            mb_down_per_client=1.0 / 3.0,
            mb_up_per_client=0.0,
            epoch_time_s=1.25,
        ).with_test({"test-accuracy": 0.1875, "test-loss": 2.0794415416798357}),
        EpochRecord(epoch=2, train_loss=0.1, mean_clients_per_step=2.5, dropped_client_steps=1),
    ]
    for record in written:
        recorder.log_epoch(record)
    from_json = [
        EpochRecord.from_row(json.loads(line))
        for line in (recorder.dir / HISTORY_JSONL).read_text().splitlines()
    ]
    with (recorder.dir / HISTORY_CSV).open() as fh:
        from_csv = [EpochRecord.from_row(row) for row in csv.DictReader(fh)]
    assert from_json == from_csv
    for got, sent in zip(from_json, written, strict=True):
        assert got.wall_time_s is not None  # the recorder stamps it
        assert got.replace(wall_time_s=None) == sent
    assert '"steps": null' in (recorder.dir / HISTORY_JSONL).read_text().splitlines()[1]
    with (recorder.dir / HISTORY_CSV).open() as fh:
        assert next(csv.reader(fh)) == [*COLUMNS, "test-accuracy", "test-loss"]
    table = format_table(recorder.history, CLASSIFICATION.table_columns)
    assert table.splitlines()[0] == (
        "| epoch | train-loss | test-accuracy | mb-up-per-client | mb-down-per-client | "
        "epoch-time-s | wall-time-s |"
    )


def test_a_column_null_in_every_row_is_not_shown():
    history = [{"epoch": 1, "train-loss": 0.5, "steps": None, "test-accuracy": None}]
    assert format_table(history, ["epoch", "steps", "train-loss"]).splitlines()[0] == (
        "| epoch | train-loss |"
    )
    history.append({"epoch": 2, "train-loss": 0.25, "steps": 4})
    lines = format_table(history, ["epoch", "steps"]).splitlines()
    assert lines[2:] == ["| 1 |  |", "| 2 | 4 |"]


def test_every_strategy_writes_the_same_columns(tiny):
    cfg = tiny()
    rows: dict[str, list[EpochRecord]] = {"centralized": [], "fedavg": [], "mpsl": []}

    def evaluate(epoch, head, server):
        return Experiment.from_config(cfg).evaluate(head, server)

    central = tiny(strategy="centralized")
    Centralized(Experiment.from_config(central)).start(None, evaluate, rows["centralized"].append)
    fedavg = tiny(strategy="fedavg")
    FederatedAveraging(Experiment.from_config(fedavg)).start(
        LocalGrid(client_app, 2, fedavg.to_mapping()), evaluate, rows["fedavg"].append
    )
    MPSL(Experiment.from_config(cfg)).start(
        LocalGrid(client_app, 2, cfg.to_mapping()), evaluate, rows["mpsl"].append
    )
    expected = [*COLUMNS, "test-accuracy", "test-loss"]
    for strategy, records in rows.items():
        assert len(records) == 1, strategy
        assert isinstance(records[0], EpochRecord), strategy
        assert list(records[0].to_row()) == expected, strategy
    # What each one does not measure is null, not missing.
    assert rows["fedavg"][0].steps is None
    assert rows["centralized"][0].mean_clients_per_step is None
    assert rows["mpsl"][0].steps is not None and rows["mpsl"][0].train_accuracy is not None

"""Plots a person reads at a glance: a chance line, whole-number epochs, train accuracy
beside test, and a legend that says what the band is."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data.registry import dataset_info
from mpsl_flwr.results import plot_history
from mpsl_flwr.tasks import task_of
from mpsl_flwr.tools.compare import plot_curves


@pytest.fixture
def drawn(monkeypatch) -> list[Figure]:
    figures: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    return figures


def labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def whole_ticks(ax) -> bool:
    return all(float(t).is_integer() for t in ax.get_xticks())


def test_a_run_plot_has_train_beside_test_a_chance_line_and_whole_epochs(drawn):
    history = [
        {
            "epoch": e,
            "test-accuracy": 0.2 + 0.1 * e,
            "train-accuracy": 0.3 + 0.1 * e,
            "train-loss": 2.0 / e,
        }
        for e in (1, 2, 3)
    ]
    plot_history(history, Path("unused.png"), "run", "test-accuracy", chance=0.1)
    ax = drawn[0].axes[0]
    assert labels(ax) == ["test (test-accuracy)", "train accuracy", "chance (0.100)"]
    assert list(ax.get_lines()[-1].get_ydata()) == [0.1, 0.1]
    assert whole_ticks(ax) and whole_ticks(drawn[0].axes[1])


def test_a_comparison_plot_says_the_band_is_std_over_seeds(drawn):
    curves = {
        "mpsl": {"metric": "test-accuracy", "curves": [[0.2, 0.4], [0.3, 0.5]], "chance": 0.1},
        "fedavg": {"metric": "test-accuracy", "curves": [[0.2, 0.3], [0.2, 0.4]], "chance": 0.1},
    }
    plot_curves(curves, Path("unused.png"), "cmp")
    ax = drawn[0].axes[0]
    assert labels(ax) == [
        "mpsl (mean ± std, 2 seeds)",
        "fedavg (mean ± std, 2 seeds)",
        "chance (0.100)",
    ]
    assert whole_ticks(ax)


def test_chance_is_uniform_guessing_for_classification():
    info = dataset_info(RunConfig(dataset="synthetic-vqa").data)
    assert task_of(info).chance(info.num_classes) == pytest.approx(0.1)
    retrieval = dataset_info(RunConfig(dataset="synthetic-retrieval").data)
    assert task_of(retrieval).chance(retrieval.num_classes) is None


def test_one_seed_is_labelled_as_one_seed_without_a_band(drawn):
    curves = {"mpsl": {"metric": "test-accuracy", "curves": [[0.2, 0.4]], "chance": 0.1}}
    plot_curves(curves, Path("unused.png"), "cmp")
    ax = drawn[0].axes[0]
    assert labels(ax) == ["mpsl (1 seed)", "chance (0.100)"]
    assert not ax.collections  # no ± std band to misread

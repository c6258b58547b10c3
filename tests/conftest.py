"""Shared fixtures: a tiny, fast configuration of the real model and data."""

from __future__ import annotations

import pytest
import torch

from mpsl_flwr.config import RunConfig

torch.set_num_threads(2)

TINY = {
    "encoder-depth": 2,
    "synthetic-train-size": 96,
    "synthetic-test-size": 32,
    "batch-size": 16,
    "epochs": 1,
    "progress": False,
    "eval-batch-size": 64,
}


@pytest.fixture
def tiny(tmp_path):
    """``tiny(**overrides)``: a RunConfig that trains in well under a second a step."""

    def make(**overrides) -> RunConfig:
        values = {**TINY, "output-dir": str(tmp_path / "outputs")}
        values.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return RunConfig.from_mapping(values)

    return make

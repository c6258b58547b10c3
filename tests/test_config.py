"""The one config surface: pyproject defaults, validation and override parsing."""

from __future__ import annotations

import pytest

from mpsl_flwr.config import ConfigError, RunConfig, load_pyproject_config, parse_overrides


def test_pyproject_table_matches_dataclass_defaults():
    table = load_pyproject_config()
    defaults = RunConfig().to_mapping()
    assert list(table) == list(defaults), "keys (and their order) must match"
    assert table == defaults


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match="Did you mean 'learning-rate'"):
        RunConfig.from_mapping({"learning-rat": 0.1})


def test_wrong_type_names_key_and_example():
    with pytest.raises(ConfigError, match=r"'epochs' expects a int.*epochs=8"):
        RunConfig.from_mapping({"epochs": "three"})


def test_choice_outside_the_list():
    with pytest.raises(ConfigError, match="'fusion' must be one of auto, early, late"):
        RunConfig.from_mapping({"fusion": "middle"})


def test_ranges_are_checked():
    with pytest.raises(ConfigError, match="finetune-blocks"):
        RunConfig.from_mapping({"encoder-depth": 4, "finetune-blocks": 5})
    with pytest.raises(ConfigError, match="dirichlet-alpha"):
        RunConfig.from_mapping({"dirichlet-alpha": 0.0})


def test_int_is_accepted_for_float_and_trainable_blocks_resolves():
    cfg = RunConfig.from_mapping({"learning-rate": 1, "encoder-depth": 4})
    assert cfg.learning_rate == 1.0
    assert cfg.trainable_blocks == 4
    assert RunConfig.from_mapping({"finetune-blocks": 2}).trainable_blocks == 2


def test_overrides_parse_like_flwr_run_and_accept_bare_strings():
    values = parse_overrides(
        ["epochs=3 learning-rate=1e-3 dataset='synthetic-va'", "progress=false"]
    )
    assert values == {
        "epochs": 3,
        "learning-rate": 1e-3,
        "dataset": "synthetic-va",
        "progress": False,
    }
    assert parse_overrides(["output-dir=/tmp/runs"]) == {"output-dir": "/tmp/runs"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])

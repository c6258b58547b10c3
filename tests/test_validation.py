"""Bad run-config values are refused before anything starts, in one line naming the key,
the value and a fix (issue 15, item 10). No training: each check is a config build."""

from __future__ import annotations

import math

import pytest

from mpsl_flwr.config import ConfigError, RunConfig

FLOAT_KEYS = [
    "synthetic-difficulty",
    "temperature",
    "learning-rate",
    "weight-decay",
    "warmup-ratio",
    "dirichlet-alpha",
    "node-wait-timeout",
    "step-timeout",
    "max-client-mb",
    "max-abs-activation",
    "label-epsilon",
]


def test_every_float_key_is_listed():
    floats = [k for k, v in RunConfig().to_mapping().items() if isinstance(v, float)]
    assert sorted(floats) == sorted(FLOAT_KEYS)


def refused(values: dict) -> str:
    """The message of the ConfigError that ``values`` raise; it must be one line."""
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_in_every_float_key(key, value):
    message = refused({key: value})
    assert f"'{key}' must be a finite number; got {value!r}" in message
    assert f"{key}=" in message.split("Fix:")[1]


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("weight-decay", -0.01, ">= 0"),
        ("seed", -1, ">= 0"),
        ("data-seed", -1, ">= 0"),
        ("min-partition-size", -1, ">= 0"),
        ("step-timeout", 0.0, "> 0"),
        ("node-wait-timeout", -1.0, "> 0"),
        ("batch-size", 0, "> 0"),
        ("image-size", -16, ">= 0"),
    ],
)
def test_out_of_range_names_key_value_and_fix(key, value, rule):
    message = refused({key: value})
    assert f"'{key}' must be {rule}" in message and f"got {value!r}" in message
    assert "Fix:" in message


def test_unknown_dataset_suggests_the_closest_name():
    message = refused({"dataset": "synthetic-vq"})
    assert "'dataset' must be one of synthetic-vqa" in message
    assert "Did you mean 'synthetic-vqa'?" in message
    assert "Did you mean 'kinetics-sounds'?" in refused({"dataset": "kinetics"})


def test_a_choice_key_suggests_the_closest_choice():
    assert "Did you mean 'early'?" in refused({"fusion": "eraly"})


@pytest.mark.parametrize("size", [50, 8, 100])
def test_image_size_must_be_a_multiple_of_the_patch(size):
    message = refused({"image-size": size})
    assert "'image-size' must be a multiple of the 16-pixel patch" in message
    below = size // 16 * 16
    assert f"image-size={below or 16} or {below + 16}" in message


def test_good_values_still_pass():
    RunConfig.from_mapping(
        {"image-size": 224, "seed": 3, "weight-decay": 0.0, "dataset": "meld"}
    )


def test_dataset_names_match_the_loaders_and_the_generator():
    from mpsl_flwr.data import loaders, names, synthetic

    assert names.REAL == loaders.NAMES and names.BUILTIN == synthetic.TASKS

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
    RunConfig.from_mapping({"image-size": 224, "seed": 3, "weight-decay": 0.0, "dataset": "meld"})


def test_dataset_names_match_the_loaders_and_the_generator():
    from mpsl_flwr.data import loaders, names, synthetic

    assert names.REAL == loaders.NAMES and names.BUILTIN == synthetic.TASKS


# ----------------------------------------------- against the dataset and the machine
def test_early_fusion_with_retrieval_is_refused_at_setup(tiny):
    from mpsl_flwr.experiment import Experiment

    with pytest.raises(ConfigError, match=r"'fusion' is 'early'.*Fix: fusion=late") as err:
        Experiment.from_config(tiny(dataset="synthetic-retrieval", fusion="early"))
    assert "\n" not in str(err.value)


def test_a_missing_pretrained_file_is_refused(tiny, tmp_path):
    from mpsl_flwr.preflight import check_server

    missing = tmp_path / "no-such.pth"
    with pytest.raises(ConfigError, match="'pretrained' names no file") as err:
        check_server(tiny(pretrained=str(missing)))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_that_does_not_fit_is_refused_before_a_run_starts(tiny, tmp_path):
    """A launcher loads the checkpoint into a meta-device model first: what stays random
    (a Meta-Transformer file holds only blocks) and a wrong width fail in one line."""
    import torch
    from timm.models.vision_transformer import Block
    from torch import nn

    from mpsl_flwr.preflight import preflight

    def blocks(width: int) -> str:
        encoder = nn.Sequential(*[Block(width, 3, qkv_bias=True) for _ in range(2)])
        path = tmp_path / f"encoder-{width}.pth"
        torch.save(encoder.state_dict(), path)
        return str(path)

    with pytest.raises(ConfigError, match=r"head\.tokenizers.*pretrained-allow-random=true") as err:
        preflight(tiny(pretrained=blocks(192)), 1)
    assert "\n" not in str(err.value)
    preflight(tiny(pretrained=blocks(192), pretrained_allow_random=True), 1)
    with pytest.raises(ConfigError, match=r"width 384.*model-size"):
        preflight(tiny(pretrained=blocks(384), pretrained_allow_random=True), 1)


@pytest.mark.parametrize("key", ["server-device", "client-device"])
def test_cuda_without_a_gpu_is_refused(tiny, monkeypatch, key):
    import torch

    from mpsl_flwr.preflight import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"'{key}' is 'cuda'.*Fix: {key}="):
        preflight(tiny(**{key: "cuda"}), 2)


def test_more_clients_than_samples_is_refused(tiny):
    from mpsl_flwr.preflight import preflight

    cfg = tiny(synthetic_train_size=10, min_partition_size=0)
    preflight(cfg, 10)
    with pytest.raises(ConfigError, match="11 clients but dataset=synthetic-vqa has 10"):
        preflight(cfg, 11)
    with pytest.raises(ConfigError, match="'min-partition-size' must be at most 3"):
        preflight(cfg.replace(min_partition_size=4), 3)


def _no_superlink(*args, **kwargs):
    raise AssertionError("a SuperLink was started for a run that cannot start")


@pytest.mark.parametrize(
    ("overrides", "nodes", "error"),
    [
        ({"synthetic-train-size": 8}, 9, "9 clients"),
        ({"pretrained": "/no/such/checkpoint.pth"}, 2, "'pretrained' names no file"),
        ({"dataset": "meld"}, 2, "set run-config 'data-dir'"),
        ({"dataset": "meld", "data-dir": "/no/such/dir"}, 2, "does not exist"),
        ({"dataset": "synthetic-retrieval", "fusion": "early"}, 2, "'fusion' is 'early'"),
    ],
)
def test_mpsl_run_refuses_before_it_starts_a_superlink(monkeypatch, overrides, nodes, error):
    from mpsl_flwr.data.errors import DatasetError
    from mpsl_flwr.ops import launch

    monkeypatch.setattr(launch, "local_superlink", _no_superlink)
    with pytest.raises((ConfigError, DatasetError), match=error):
        launch.main(overrides, nodes)


def test_too_many_partitions_is_a_config_error(tiny):
    from mpsl_flwr.data.registry import client_partition

    with pytest.raises(ConfigError, match="96 training samples cannot fill 97 partitions"):
        client_partition(tiny().data, 0, 97, seed=0)


def test_the_server_app_refuses_more_nodes_than_samples_before_writing(tiny, tmp_path):
    from clients.client_app import app as client_app
    from mpsl_flwr.local_grid import LocalGrid
    from strategies.runner import run_experiment

    cfg = tiny(synthetic_train_size=4, output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="5 clients but dataset=synthetic-vqa has 4"):
        run_experiment(cfg, LocalGrid(client_app, 5, cfg.to_mapping()))
    assert not (tmp_path / "out").exists()

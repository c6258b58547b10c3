"""The one config surface: pyproject defaults, validation and override parsing."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from mpsl_flwr.config import (
    ConfigError,
    RunConfig,
    load_pyproject_config,
    parse_overrides,
    resolve_config,
)
from mpsl_flwr.registry import strategy_spec


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


def test_overrides_parse_exactly_as_flwr_run_does():
    values = parse_overrides(
        ["epochs=3 learning-rate=1e-3 dataset='synthetic-va'", "progress=false"]
    )
    assert values == {
        "epochs": 3,
        "learning-rate": 1e-3,
        "dataset": "synthetic-va",
        "progress": False,
    }
    assert parse_overrides(['output-dir="/tmp/runs"']) == {"output-dir": "/tmp/runs"}


@pytest.mark.parametrize(
    "text, fix",
    [
        ("dataset=synthetic-va", "dataset='synthetic-va'"),
        ("output-dir=/tmp/runs", "output-dir='/tmp/runs'"),
        ("run-name=2024-01-01", "run-name='2024-01-01'"),
        ("epochs", "key=value"),
        ("epochs 3", "key=value"),
    ],
)
def test_what_flwr_run_refuses_or_ignores_is_refused_naming_the_fix(text, fix):
    from flwr.common.config import parse_config_args

    with pytest.raises(ConfigError, match=re.escape(fix)):
        parse_overrides([text])
    try:
        flower = parse_config_args([text])
    except Exception:
        flower = None  # Flower refuses it too ...
    assert flower in (None, {})  # ... or drops it without a word


@pytest.mark.parametrize(
    "text, name",
    [("run-name='123'", "123"), ("run-name='2024-01-01'", "2024-01-01"), ("run-name=123", "123")],
)
def test_strings_that_look_like_numbers_or_dates_are_run_names(text, name):
    assert resolve_config([text]).run_name == name


def test_the_pair_pattern_is_flowers_own():
    import inspect

    from flwr.common.config import parse_config_args

    from mpsl_flwr.config import FLOWER_PAIR

    source = inspect.getsource(parse_config_args)
    assert f'pattern = re.compile(r"{FLOWER_PAIR.pattern}")' in source


PARTS = ("data", "model", "optim", "federation", "privacy", "output")


def test_parts_are_views_of_the_flat_keys():
    cfg = RunConfig.from_mapping(
        {
            "dataset": "synthetic-va",
            "dirichlet-alpha": 0.5,
            "encoder-depth": 4,
            "finetune-blocks": 1,
            "learning-rate": 1e-3,
            "step-timeout": 7.0,
            "client-device": "cpu",
            "run-name": "x",
        }
    )
    assert cfg.data.dataset == "synthetic-va" and cfg.data.dirichlet_alpha == 0.5
    assert (cfg.model.depth, cfg.model.trainable_blocks) == (4, 1) == (cfg.depth, 1)
    assert cfg.optim.learning_rate == 1e-3 and cfg.optim.batch_size == cfg.batch_size
    assert cfg.federation.step_timeout == 7.0 and cfg.federation.client_device == "cpu"
    assert cfg.output.run_name == "x"
    assert cfg.replace(epochs=2).optim.epochs == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.epochs = 3  # type: ignore[misc]


def test_each_key_belongs_to_at_most_one_part_with_its_type():
    hints = typing.get_type_hints(RunConfig)
    cfg = RunConfig()
    owner: dict[str, str] = {}
    for part in PARTS:
        sub = getattr(cfg, part)
        for f in dataclasses.fields(sub):
            assert f.name not in owner, f"{f.name} in {owner.get(f.name)} and {part}"
            owner[f.name] = part
            assert typing.get_type_hints(type(sub))[f.name] == hints[f.name], f.name
            assert getattr(sub, f.name) == getattr(cfg, f.name)
    outside = {f.name for f in dataclasses.fields(RunConfig)} - set(owner)
    assert outside == {"strategy", "seed", "stage_blocks", "stage_rounds"}
    # The flat surface is unchanged: the parts are no keys of their own.
    assert not set(PARTS) & set(RunConfig.keys()) and set(cfg.to_mapping()) == set(cfg.keys())


def test_builders_take_their_part(tiny):
    import torch

    from mpsl_flwr.data.registry import client_partition, dataset_info, load_split
    from mpsl_flwr.experiment import Experiment
    from mpsl_flwr.models.split_model import ModelSpec
    from mpsl_flwr.optim import make_optimizer, make_scheduler, scheduled_lr

    cfg = tiny(learning_rate=2e-3, weight_decay=0.1, warmup_ratio=0.25)
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(params, cfg.optim)
    assert optimizer.param_groups[0]["lr"] == 2e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    scheduler = make_scheduler(optimizer, cfg.optim, 8)
    for step in range(8):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduled_lr(cfg.optim, step, 8))
        optimizer.step()
        scheduler.step()
    info = dataset_info(cfg.data)
    assert len(load_split(cfg.data, "train")) == 96
    parts = [client_partition(cfg.data, c, 2, seed=cfg.seed) for c in range(2)]
    assert sorted(i for p in parts for i in p.tolist()) == list(range(96))
    other = client_partition(cfg.data, 0, 2, seed=cfg.seed + 1)
    assert other.tolist() != parts[0].tolist()  # the run's seed fixes the partitions
    options = strategy_spec(cfg.strategy).model(cfg)
    spec = ModelSpec.from_config(cfg.model, info, options=options, seed=cfg.seed)
    assert spec == Experiment.from_config(cfg).spec
    assert spec.depth == cfg.model.depth and spec.task.kind == info.kind

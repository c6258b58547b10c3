"""The strategy registry: every entry resolves, and everything else follows it."""

from __future__ import annotations

import importlib
import inspect
import typing

import pytest

from clients.client_app import app as client_app
from mpsl_flwr.config import ConfigError, RunConfig
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.registry import STRATEGIES, strategy_spec
from strategies import load_runner
from strategies.base import Runner


def test_the_config_accepts_exactly_the_registry_names():
    hints = typing.get_type_hints(RunConfig)
    assert typing.get_args(hints["strategy"]) == tuple(STRATEGIES)
    for name in STRATEGIES:
        assert RunConfig.from_mapping({"strategy": name}).strategy == name
    with pytest.raises(ConfigError, match="must be one of mpsl, fedavg"):
        RunConfig.from_mapping({"strategy": "fedsgd"})


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_entry_names_a_runner_and_handlers_that_exist(name):
    spec = strategy_spec(name)
    runner = load_runner(spec)
    assert spec.runner.startswith("strategies."), "runners live in strategies/"
    members = {n for n, _ in inspect.getmembers(Runner) if not n.startswith("_")}
    assert members <= set(dir(runner)) | {"head", "server_model", "meter"}
    params = list(inspect.signature(runner.start).parameters)
    assert params[:5] == ["self", "grid", "evaluate_fn", "on_epoch_end", "checkpointing"]
    if spec.client is not None:
        assert spec.client.startswith("clients.")
        handlers = importlib.import_module(spec.client).HANDLERS
        assert handlers and all(callable(h) for h in handlers.values())


def test_the_clientapp_answers_every_registered_message_type():
    registered = {name.removesuffix(".default") for name in client_app._registered_funcs}
    expected = {"query.info"}
    for spec in STRATEGIES.values():
        if spec.client is not None:
            expected |= set(importlib.import_module(spec.client).HANDLERS)
    assert expected <= registered


def test_parameter_counts_follow_where_a_strategy_trains(tiny):
    counts = {}
    for name in ("mpsl", "fedavg", "centralized"):
        exp = Experiment.from_config(tiny(strategy=name))
        head, server = exp.initial_model()
        counts[name] = exp.parameter_counts(head, server)
    total = sum(counts["mpsl"].values())
    assert counts["mpsl"]["client-trainable-params"] > 0
    assert counts["mpsl"]["server-trainable-params"] > 0
    assert counts["fedavg"] == {"client-trainable-params": total, "server-trainable-params": 0}
    assert counts["centralized"] == {"client-trainable-params": 0, "server-trainable-params": total}


def test_model_options_come_from_the_registry_not_from_strategy_names(tiny):
    fedclip = Experiment.from_config(tiny(strategy="fedclip", fedclip_adapter="shared")).spec
    fedavg = Experiment.from_config(tiny(strategy="fedavg")).spec
    assert (fedclip.trainable_blocks, fedclip.adapter, fedclip.train_head) == (0, "shared", False)
    assert (fedavg.adapter, fedavg.train_head) == ("none", True)
    assert fedavg.trainable_blocks == tiny().trainable_blocks


def test_resume_is_refused_for_strategies_that_cannot_resume():
    resumable = [n for n, s in STRATEGIES.items() if s.resumable]
    assert resumable == ["mpsl", "centralized"]
    with pytest.raises(
        ConfigError, match="supported for strategy mpsl and centralized, not fedavg"
    ):
        RunConfig.from_mapping({"strategy": "fedavg", "resume": True, "run-name": "x"})

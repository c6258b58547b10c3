"""Flower strategies of mpsl-flwr, one algorithm per module, chosen by run-config ``strategy``.

Each strategy is one entry of :data:`mpsl_flwr.registry.STRATEGIES` naming its runner
here; every runner has the interface of :class:`strategies.base.Runner`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mpsl_flwr.registry import StrategySpec

if TYPE_CHECKING:
    from strategies.base import Runner


def load_runner(spec: StrategySpec) -> type[Runner]:
    """The runner class a registry entry names (``"module:Class"``)."""
    module, _, name = spec.runner.partition(":")
    return getattr(importlib.import_module(module), name)

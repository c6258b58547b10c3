"""The strategies mpsl-flwr runs: one :class:`StrategySpec` each, in :data:`STRATEGIES`.

Everything that differs between strategies outside their own modules is a field of
their spec: whether they need a Flower grid, whether a run can resume, where the
trainable parameters train (and so what a client trains, sends and pays for), what
they change in the model, which stage schedule they follow. Run-config validation,
model building, the ServerApp, the ClientApp, ``mpsl-compare``, ``mpsl-costs`` and
``mpsl-traffic-sweep`` look strategies up here; adding one is its own module(s) in
``strategies/`` (and ``clients/`` if it has handlers of its own) plus one entry below.

The runner and the client handlers are named by import path (``"module:attribute"``,
as Flower names a ServerApp and a ClientApp), so this core module imports neither
``strategies`` nor ``clients``: only the ServerApp (``strategies.load_runner``) and the
ClientApp resolve them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mpsl_flwr.config import RunConfig

Side = Literal["split", "clients", "server"]
"""Where the trainable parameters train: ``split`` (head on the clients, the rest on the
server), ``clients`` (all of them on every client, FedAvg-style), ``server`` (all of them
in one process: centralized)."""

Stages = Literal["layer-wise", "progressive"]


@dataclass(frozen=True)
class ModelOptions:
    """What a strategy changes in the model: which encoder blocks train (None: the
    ``finetune-blocks`` key decides), the attention adapters over the pooled features
    (``none``, ``per-modality``, ``shared``), and whether the client head trains."""

    trainable_blocks: int | None = None
    adapter: str = "none"
    train_head: bool = True


def _as_configured(cfg: RunConfig) -> ModelOptions:
    return ModelOptions()


def _frozen_encoder_with_adapters(cfg: RunConfig) -> ModelOptions:
    return ModelOptions(
        trainable_blocks=0, adapter=cfg.fedclip_adapter, train_head=cfg.fedclip_train_tokenizers
    )


@dataclass(frozen=True)
class StrategySpec:
    """One strategy: its name, where it trains, its runner and its client handlers."""

    name: str
    title: str
    runner: str  # "module:Class" of its runner, in strategies/
    client: str | None  # module of its ClientApp handlers (``HANDLERS``), in clients/
    side: Side
    needs_grid: bool = True
    resumable: bool = False
    stages: Stages | None = None
    model: Callable[[RunConfig], ModelOptions] = field(default=_as_configured)


STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in (
        StrategySpec(
            "mpsl",
            "Multimodal Parallel Split Learning (Fudala et al., 2025)",
            "strategies.mpsl:MPSL",
            "clients.mpsl",
            "split",
            resumable=True,
        ),
        StrategySpec(
            "fedavg",
            "Flower's stock FedAvg over what MPSL trains (McMahan et al., 2017)",
            "strategies.fedavg:FederatedAveraging",
            "clients.fedavg",
            "clients",
        ),
        StrategySpec(
            "fedclip",
            "FedCLIP-style adapters on a frozen encoder (Lu et al., 2023)",
            "strategies.fedclip:FedCLIPTraining",
            "clients.fedavg",
            "clients",
            model=_frozen_encoder_with_adapters,
        ),
        StrategySpec(
            "lw-fedmml",
            "Layer-wise federated multimodal training (Tun et al., 2024)",
            "strategies.staged:StagedTraining",
            "clients.fedavg",
            "clients",
            stages="layer-wise",
        ),
        StrategySpec(
            "prog-fedmml",
            "Progressive federated multimodal training (Tun et al., 2024)",
            "strategies.staged:StagedTraining",
            "clients.fedavg",
            "clients",
            stages="progressive",
        ),
        StrategySpec(
            "centralized",
            "Centralized training of the whole model (the reference)",
            "strategies.centralized:Centralized",
            None,
            "server",
            needs_grid=False,
            resumable=True,
        ),
    )
}


def strategy_spec(name: str) -> StrategySpec:
    """The spec of strategy ``name`` (a KeyError naming the valid ones otherwise)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}") from None


def staged_strategies() -> tuple[str, ...]:
    """Names of the strategies that train in stages."""
    return tuple(name for name, s in STRATEGIES.items() if s.stages is not None)

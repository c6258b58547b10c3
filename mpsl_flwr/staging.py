"""The stage schedule of layer-wise and progressive federated training.

Tun, Thwal, Nguyen and Hong, "Resource-Efficient Federated Multimodal Learning via
Layer-wise and Progressive Training" (arXiv 2407.15426) train the encoder in ``S``
stages of ``stage-blocks`` blocks each, for ``stage-rounds`` rounds per stage:

* **layer-wise** (LW-FedMML): stage ``s`` trains only blocks ``[s*k, (s+1)*k)``; the
  blocks before them are frozen (the client head, trained in stage 0, too) and the
  blocks after them are not run at all;
* **progressive** (Prog-FedMML): stage ``s`` trains every block up to ``(s+1)*k`` and
  the client head.

In both, the task tail (the "head" of the paper) and, with ``final-norm=true``, the
final encoder norm train in every stage. The model here is
:class:`~mpsl_flwr.models.split_model.SplitModel`; parameter names are its own
(``head.*``, ``server.encoder.blocks.<i>.*`` ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mpsl_flwr.config import RunConfig
from mpsl_flwr.models.server import Encoder
from mpsl_flwr.models.split_model import SplitModel
from mpsl_flwr.registry import staged_strategies, strategy_spec

FROZEN = "frozen"  # the record that carries a stage's frozen blocks to a node
_BLOCK = re.compile(r"^server\.encoder\.blocks\.(\d+)\.")
_TOKEN_TABLE = "head.tokenizers.text.token_embedding."


@dataclass(frozen=True)
class StageSchedule:
    """Which blocks run and train in each stage, and which stage a round belongs to."""

    depth: int
    blocks_per_stage: int
    rounds_per_stage: int
    progressive: bool
    train_token_embedding: bool = False

    @classmethod
    def from_config(cls, cfg: RunConfig) -> StageSchedule:
        stages = strategy_spec(cfg.strategy).stages
        if stages is None:
            raise ValueError(
                f"strategy={cfg.strategy} has no stages; use one of {staged_strategies()}."
            )
        rounds = cfg.stage_rounds or max(1, cfg.epochs // math.ceil(cfg.depth / cfg.stage_blocks))
        return cls(
            depth=cfg.depth,
            blocks_per_stage=cfg.stage_blocks,
            rounds_per_stage=rounds,
            progressive=stages == "progressive",
            train_token_embedding=cfg.train_token_embedding,
        )

    @property
    def num_stages(self) -> int:
        return math.ceil(self.depth / self.blocks_per_stage)

    def stage_of(self, server_round: int) -> int:
        """0-based stage of a 1-based round; the last stage takes every remaining round."""
        return min((server_round - 1) // self.rounds_per_stage, self.num_stages - 1)

    def stages_reached(self, rounds: int) -> int:
        """How many stages a run of ``rounds`` rounds gets to."""
        return self.stage_of(rounds) + 1

    def run_depth(self, stage: int) -> int:
        """Blocks run in ``stage``: ``blocks[:run_depth]``."""
        return min(self.depth, (stage + 1) * self.blocks_per_stage)

    def first_trained_block(self, stage: int) -> int:
        return 0 if self.progressive else stage * self.blocks_per_stage

    def trains(self, name: str, stage: int) -> bool:
        """Whether parameter ``name`` of the SplitModel trains (and travels) in ``stage``."""
        if name.startswith("head."):
            if name.startswith(_TOKEN_TABLE) and not self.train_token_embedding:
                return False
            return self.progressive or stage == 0
        block = _BLOCK.match(name)
        if block:
            return self.first_trained_block(stage) <= int(block.group(1)) < self.run_depth(stage)
        return name.startswith(("server.encoder.norm.", "server.tail."))

    def frozen_trained(self, name: str, stage: int) -> bool:
        """Trained in an earlier stage and frozen now, yet run: what a client must hold."""
        if self.trains(name, stage):
            return False
        block = _BLOCK.match(name)
        if block and int(block.group(1)) >= self.run_depth(stage):
            return False
        return any(self.trains(name, s) for s in range(stage))

    def apply(self, model: SplitModel, stage: int) -> None:
        """Set ``requires_grad`` and the encoder's run depth for ``stage``."""
        for name, p in model.named_parameters():
            p.requires_grad_(self.trains(name, stage))
        model.server.encoder.run_depth = self.run_depth(stage)

    def frozen_state(self, model: SplitModel, stage: int) -> dict[str, Tensor]:
        """The frozen-but-trained parameters of ``stage`` (empty for progressive)."""
        return {n: p.detach() for n, p in model.named_parameters() if self.frozen_trained(n, stage)}

    def describe(self, stage: int) -> str:
        first, end = self.first_trained_block(stage), self.run_depth(stage)
        return f"stage {stage + 1}/{self.num_stages}: train blocks {first}-{end - 1}, run {end}"


def load_named(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` into the parameters of the same names, trainable or not."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"unknown parameters {unknown[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))


def run_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters that a forward pass uses: all but the blocks past the run depth."""
    encoders = [m for m in model.modules() if isinstance(m, Encoder)]
    skipped = {
        id(p)
        for enc in encoders
        if enc.run_depth is not None
        for block in enc.blocks[enc.run_depth :]
        for p in block.parameters()
    }
    return (p for p in model.parameters() if id(p) not in skipped)

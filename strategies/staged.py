"""Layer-wise (LW-FedMML) and progressive (Prog-FedMML) federated multimodal training.

Tun et al., "Resource-Efficient Federated Multimodal Learning via Layer-wise and
Progressive Training" (arXiv 2407.15426): instead of every client training the whole
encoder every round (end-to-end FedAvg), training runs in stages of ``stage-blocks``
blocks (see :mod:`mpsl_flwr.staging`). In LW-FedMML a stage trains only its own blocks
plus the head on top of the frozen earlier ones and never runs the later ones, which
cuts client memory, FLOPs and traffic; Prog-FedMML trains everything up to the stage.

Aggregation is Flower's stock :class:`~flwr.serverapp.strategy.FedAvg`; this subclass
only chooses what travels. Each round it sends the arrays that train in the round's
stage. A node that lacks the frozen blocks of the current stage (every node at a stage
switch, and a node that joins or comes back later) also gets them once, in a
``frozen`` record, and keeps them in its ``context.state``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.split_model import SplitModel, trainable_state
from mpsl_flwr.staging import FROZEN, StageSchedule, load_named
from mpsl_flwr.state import from_array_record, to_array_record
from strategies.fedavg import FederatedAveraging

log = logging.getLogger("mpsl_flwr")


class StagedFedAvg(FedAvg):
    """FedAvg over the arrays of the current stage; the server model holds the rest.

    Parameters
    ----------
    schedule : StageSchedule
        Stages and which parameters train, run and freeze in each.
    model : SplitModel
        The global model; aggregated arrays are written into it, and it is put in the
        current stage (``requires_grad`` and run depth) for evaluation.
    **kwargs
        Passed to :class:`FedAvg`.
    """

    def __init__(self, schedule: StageSchedule, model: SplitModel, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schedule = schedule
        self.model = model
        self.stage = -1
        self._holding_frozen: set[int] = set()  # nodes holding this stage's frozen blocks

    def summary(self) -> None:
        super().summary()
        log.info(
            "\t├── Stages: %d of %d blocks, %d rounds each (%s)",
            self.schedule.num_stages,
            self.schedule.blocks_per_stage,
            self.schedule.rounds_per_stage,
            "progressive" if self.schedule.progressive else "layer-wise",
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        stage = self.schedule.stage_of(server_round)
        if stage != self.stage:
            self.stage = stage
            self.schedule.apply(self.model, stage)
            self._holding_frozen = set()
            log.info("Round %d: %s", server_round, self.schedule.describe(stage))
        config = ConfigRecord({**dict(config), "stage": stage})
        active = to_array_record(trainable_state(self.model))
        messages = list(super().configure_train(server_round, active, config, grid))
        frozen = self.schedule.frozen_state(self.model, stage)
        if not frozen:
            return messages
        record = to_array_record(frozen)
        # FedAvg's messages share one RecordDict: give the nodes that need more their own.
        return [
            msg
            if msg.metadata.dst_node_id in self._holding_frozen
            else Message(
                RecordDict({**dict(msg.content.items()), FROZEN: record}),
                dst_node_id=msg.metadata.dst_node_id,
                message_type=msg.metadata.message_type,
            )
            for msg in messages
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._holding_frozen |= {
            r.metadata.src_node_id for r in replies if not r.has_error() and r.has_content()
        }
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            load_named(self.model, from_array_record(arrays))
        return arrays, metrics


class StagedTraining(FederatedAveraging):
    """The FedAvg runner (rounds, metering, evaluation, reporting) with staged arrays."""

    strategy_cls = StagedFedAvg

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        self.schedule = StageSchedule.from_config(exp.cfg)
        reached = self.schedule.stages_reached(exp.cfg.epochs)
        if reached < self.schedule.num_stages:
            log.warning(
                "%d epochs reach only stage %d of %d (stage-rounds=%d): raise 'epochs' or "
                "'stage-blocks' to train the whole encoder.",
                exp.cfg.epochs,
                reached,
                self.schedule.num_stages,
                self.schedule.rounds_per_stage,
            )
        self.model = SplitModel(self.head, self.server_model)
        self.schedule.apply(self.model, 0)

    def make_strategy(self, **kwargs) -> FedAvg:
        return StagedFedAvg(self.schedule, self.model, **kwargs)

"""What every strategy sets up the same way: config, data info, model, evaluation.

Strategies differ in how they train; they share this, so that swapping ``strategy``
changes nothing else: same model and initial weights, same test split, same metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mpsl_flwr.config import ConfigError, RunConfig
from mpsl_flwr.data.base import DatasetInfo, MultimodalDataset
from mpsl_flwr.data.registry import dataset_info, load_split
from mpsl_flwr.models.checkpoints import load_pretrained
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.models.split_model import (
    ModelSpec,
    SplitModel,
    apply_trainable,
    build_head,
    build_server,
    count_trainable,
)
from mpsl_flwr.optim import resolve_device
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.tasks import Task, task_of

log = logging.getLogger("mpsl_flwr")


def check_label_privacy(cfg: RunConfig, info: DatasetInfo) -> None:
    """``label-privacy`` against the dataset (the keys alone are checked by the config)."""
    if cfg.label_privacy == "none":
        return
    if info.kind != "classification":
        raise ConfigError(
            f"label-privacy={cfg.label_privacy} protects class labels; dataset={cfg.dataset} "
            f"is a {info.kind} task, whose loss the server computes without labels. Set "
            "label-privacy=none."
        )
    if cfg.privacy.label_dp and info.num_classes < 2:
        raise ConfigError(
            f"label-privacy={cfg.label_privacy} needs at least 2 classes; dataset="
            f"{cfg.dataset} has {info.num_classes}, so there is no label to hide."
        )


@dataclass
class Experiment:
    """Config, dataset description and model spec of one run."""

    cfg: RunConfig
    info: DatasetInfo
    spec: ModelSpec

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Experiment:
        info = dataset_info(cfg.data)
        options = strategy_spec(cfg.strategy).model(cfg)
        check_label_privacy(cfg, info)
        spec = ModelSpec.from_config(
            cfg.model,
            info,
            options=options,
            seed=cfg.seed,
            client_tail=cfg.privacy.client_tail,
        )
        return cls(cfg, info, spec)

    @property
    def task(self) -> Task:
        """What the run trains for: loss, metrics and how it is reported."""
        return task_of(self.info)

    @property
    def server_device(self) -> torch.device:
        return resolve_device(self.cfg.federation.server_device, "server-device")

    def initial_model(self) -> tuple[ClientHead, ServerModel]:
        """Head and server part at their initial weights (pretrained ones if configured)."""
        head, server = build_head(self.spec), build_server(self.spec)
        model = self.cfg.model
        if model.pretrained:
            report = load_pretrained(
                model.pretrained,
                model.pretrained_format,
                head,
                server,
                allow_random=model.pretrained_allow_random,
            )
            log.info("Loaded pretrained weights: %s", report)
            if report["random"]:
                log.warning(
                    "pretrained-allow-random=true: %d tensors start random: %s",
                    len(report["random"]),
                    ", ".join(report["random"]),
                )
            apply_trainable(self.spec, head, server)
        return head, server

    def test_set(self) -> MultimodalDataset:
        return load_split(self.cfg.data, "test")

    def train_set(self) -> MultimodalDataset:
        return load_split(self.cfg.data, "train")

    def evaluate(self, head: ClientHead, server: ServerModel) -> dict[str, Any]:
        """Test metrics of ``[head; server]`` on the held-out split, keys prefixed ``test-``."""
        device = self.server_device
        model = SplitModel(head, server)
        original = next(head.parameters()).device
        model.to(device)
        metrics = self.task.evaluate(
            model, self.test_set(), self.cfg.output.eval_batch_size, device
        )
        head.to(original)
        return {f"test-{k}": v for k, v in metrics.items()}

    def parameter_counts(self, head: ClientHead, server: ServerModel) -> dict[str, int]:
        """Trainable parameters on the client side and on the server side, by where the
        strategy trains them (split at the cut, all on the clients, all on the server)."""
        client, rest = count_trainable(head), count_trainable(server)
        side = strategy_spec(self.cfg.strategy).side
        if side == "clients":
            client, rest = client + rest, 0
        elif side == "server":
            client, rest = 0, client + rest
        return {"client-trainable-params": client, "server-trainable-params": rest}

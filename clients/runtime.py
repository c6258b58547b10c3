"""What a ClientApp message handler needs, rebuilt from its :class:`Context`.

A node serves the logical clients ``partition-id * k ... partition-id * k + k - 1`` of
``num-partitions * k`` (``k`` = run-config ``clients-per-node``; 1 by default), so a
simulation of many clients can run on fewer nodes. Data and the frozen parts of the
model are cached per process; trainable weights and optimiser state come from
``context.state`` for every message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from mpsl_flwr.config import RunConfig
from mpsl_flwr.data.base import MultimodalDataset
from mpsl_flwr.data.partition import client_seed
from mpsl_flwr.data.registry import client_partition, load_split
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.split_model import (
    ModelSpec,
    SplitModel,
    build_head,
    load_trainable_state,
    trainable_state,
)
from mpsl_flwr.node_registry import clients_of_partition
from mpsl_flwr.optim import make_optimizer, resolve_device
from mpsl_flwr.privacy.label_dp import RandomizedResponse, client_noise_rng
from mpsl_flwr.split_client import SplitClient
from mpsl_flwr.staging import StageSchedule, load_named
from mpsl_flwr.state import (
    from_array_record,
    load_module,
    load_optimizer,
    save_module,
    save_optimizer,
)

LABEL_SECRET_KEY = "label-dp.secret"
LABEL_SEED_NODE_KEY = "label-dp-seed"


def label_secret(context: Context) -> int:
    """The seed of this node's label noise, which never leaves the node.

    The node config's ``label-dp-seed`` if its operator set one (reproducible, and the same
    noise when a run resumes); otherwise a random 63-bit secret drawn on first use and
    kept in ``context.state`` for the rest of the run (``query.state`` does not send it).
    """
    if LABEL_SEED_NODE_KEY in context.node_config:
        return int(context.node_config[LABEL_SEED_NODE_KEY])
    if LABEL_SECRET_KEY not in context.state:
        context.state[LABEL_SECRET_KEY] = ConfigRecord({"secret": secrets.randbits(63)})
    return int(context.state[LABEL_SECRET_KEY]["secret"])  # type: ignore[arg-type]


@lru_cache(maxsize=64)
def _noisy_cached(
    secret: int, cid: int, epsilon: float, num_classes: int, labels: bytes
) -> np.ndarray:
    rr = RandomizedResponse(epsilon, num_classes)
    return rr.noisy(np.frombuffer(labels, dtype=np.int64), client_noise_rng(secret, cid))


def _noisy_labels(
    secret: int, cid: int, epsilon: float, num_classes: int, labels: np.ndarray
) -> np.ndarray:
    return _noisy_cached(secret, cid, epsilon, num_classes, labels.astype(np.int64).tobytes())


def head_state_key(cid: int) -> str:
    return f"head.{cid}"


def optim_state_key(cid: int) -> str:
    return f"optim.{cid}"


@lru_cache(maxsize=4)
def _cached_head(spec: ModelSpec) -> tuple[ClientHead, dict[str, torch.Tensor]]:
    head = build_head(spec)
    return head, {k: v.clone() for k, v in trainable_state(head).items()}


_MODELS: dict[tuple, SplitModel] = {}


def _cached_model(exp: Experiment) -> SplitModel:
    """The whole model at its initial weights (pretrained ones included), once per process;
    callers overwrite its trainable parameters with what the server sent."""
    key = (exp.spec, exp.cfg.pretrained, exp.cfg.pretrained_format, exp.cfg.pretrained_allow_random)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = SplitModel(*exp.initial_model())
    return _MODELS[key]


@dataclass
class NodeRuntime:
    """Config, model spec and data of the logical clients this node serves."""

    cfg: RunConfig
    exp: Experiment
    client_ids: list[int]
    num_clients: int
    device: torch.device
    label_secret: int | None = None
    """label-dp: the seed of this node's randomized response, known only to the node."""

    @classmethod
    def from_context(cls, context: Context) -> NodeRuntime:
        cfg = RunConfig.from_mapping(context.run_config)
        node_cfg = context.node_config
        if "partition-id" not in node_cfg or "num-partitions" not in node_cfg:
            raise KeyError(
                "This SuperNode has no 'partition-id'/'num-partitions' in its node config. "
                'Start it with --node-config "partition-id=0 num-partitions=2".'
            )
        pid, parts = int(node_cfg["partition-id"]), int(node_cfg["num-partitions"])
        k = cfg.federation.clients_per_node
        return cls(
            cfg=cfg,
            exp=Experiment.from_config(cfg),
            client_ids=clients_of_partition(pid, k),
            num_clients=parts * k,
            device=resolve_device(cfg.federation.client_device, "client-device"),
            label_secret=label_secret(context) if cfg.privacy.label_dp else None,
        )

    def train_set(self) -> MultimodalDataset:
        return load_split(self.cfg.data, "train")

    def partition(self, cid: int) -> np.ndarray:
        self.check_client(cid)
        return client_partition(self.cfg.data, cid, self.num_clients, seed=self.cfg.seed)

    def check_client(self, cid: int) -> None:
        if cid not in self.client_ids:
            raise ValueError(f"This node serves clients {self.client_ids}, not client {cid}.")

    def split_client(self, cid: int, state: RecordDict) -> SplitClient:
        """Client ``cid`` with its head and optimiser restored from ``state``."""
        head, initial = _cached_head(self.exp.spec)
        if not load_module(state, head_state_key(cid), head):
            load_trainable_state(head, initial)
        head.to(self.device)
        optimizer = make_optimizer(head.parameters(), self.cfg.optim)
        load_optimizer(state, optim_state_key(cid), optimizer)
        dataset, partition = self.train_set(), self.partition(cid)
        return SplitClient(
            head,
            optimizer,
            dataset,
            partition,
            client_seed(self.cfg.seed, cid),
            self.device,
            self.exp.task,
            self.training_labels(cid, dataset, partition),
        )

    def training_labels(
        self, cid: int, dataset: MultimodalDataset, partition: np.ndarray
    ) -> np.ndarray | None:
        """label-dp: client ``cid``'s randomized-response labels, one per partition
        position, drawn once per run from the node's secret (None without label-dp)."""
        if self.label_secret is None:
            return None
        return _noisy_labels(
            self.label_secret,
            cid,
            self.cfg.label_epsilon,
            self.exp.info.num_classes,
            dataset.labels[partition],
        )

    def state_keys(self, cid: int) -> tuple[str, str, str]:
        """Where client ``cid``'s head, optimiser tensors and optimiser config live in
        ``context.state`` (in the order of ``protocol.CLIENT_STATE_PARTS``)."""
        return head_state_key(cid), optim_state_key(cid), optim_state_key(cid) + ".cfg"

    def full_model(
        self, arrays: ArrayRecord, stage: int | None = None, frozen: ArrayRecord | None = None
    ) -> SplitModel:
        """The whole model with its trainable parameters set to ``arrays`` (FedAvg family).

        For a staged strategy, the model is put in ``stage`` first and ``frozen`` (the
        blocks earlier stages trained, which this stage runs frozen) is loaded too.
        """
        model = _cached_model(self.exp)
        if stage is not None:
            schedule = StageSchedule.from_config(self.cfg)
            schedule.apply(model, stage)
            needed = schedule.frozen_state(model, stage)
            if needed:
                if frozen is None:
                    raise RuntimeError(
                        f"This node lacks the frozen blocks of stage {stage + 1}; the server "
                        "sends them to every node that has not yet replied in this stage."
                    )
                load_named(model, from_array_record(frozen))
        load_trainable_state(model, from_array_record(arrays))
        return model.to(self.device)

    def save(self, cid: int, state: RecordDict, client: SplitClient) -> None:
        """Persist client ``cid``'s head and optimiser into ``state``."""
        save_module(state, head_state_key(cid), client.head)
        save_optimizer(state, optim_state_key(cid), client.optimizer)

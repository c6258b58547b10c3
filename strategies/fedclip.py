"""FedCLIP-style adapter tuning (Lu et al., "FedCLIP: Fast Generalization and
Personalization for CLIP in Federated Learning", 2023) on the MPSL model.

The encoder stays frozen; an attention adapter (Linear, Tanh, Linear, Softmax, gating the
pooled features; per modality or shared, run-config ``fedclip-adapter``) and the task
head train on the clients, optionally with the tokenizers (``fedclip-train-tokenizers``).
Its registry entry (:data:`mpsl_flwr.registry.STRATEGIES`) tells the model builder, on
the server and on every client, to freeze the encoder and add the adapters; FedAvg then
exchanges the trainable arrays only, so the frozen encoder never travels. Aggregation
is FedAvg's, inherited.
"""

from __future__ import annotations

import logging

from flwr.serverapp.strategy import FedAvg

from strategies.fedavg import FederatedAveraging

log = logging.getLogger("mpsl_flwr")


class FedCLIP(FedAvg):
    """FedAvg over adapter and head arrays (the frozen encoder never travels)."""

    def summary(self) -> None:
        """Log the configuration (FedAvg's), noting what is exchanged."""
        super().summary()
        log.info("\t└── Exchanged: attention adapters and task head (the encoder is frozen)")


class FedCLIPTraining(FederatedAveraging):
    """The FedAvg runner with :class:`FedCLIP` as its Flower strategy."""

    strategy_cls = FedCLIP

"""FedCLIP-style adapter tuning (Lu et al., "FedCLIP: Fast Generalization and
Personalization for CLIP in Federated Learning", 2023) on the MPSL model.

The encoder stays frozen; an attention adapter (Linear, Tanh, Linear, Softmax, gating the
pooled features; per modality or shared, run-config ``fedclip-adapter``) and the task
head train on the clients, optionally with the tokenizers (``fedclip-train-tokenizers``).
Only those arrays are trained and exchanged: the model spec marks everything else
frozen, and FedAvg exchanges trainable arrays only. Aggregation is FedAvg's, inherited.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg


class FedCLIP(FedAvg):
    """FedAvg over adapter and head arrays (the frozen encoder never travels)."""

    def summary(self) -> None:
        """Log the configuration (FedAvg's), noting what is exchanged."""
        super().summary()

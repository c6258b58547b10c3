"""FedCLIP's attention adapter (Lu et al., "FedCLIP", 2023).

``a = softmax(W2 tanh(W1 f))`` gates the pooled feature ``f`` element-wise: ``f * a``.
With the encoder frozen, this small module (plus the task head) is all FedCLIP trains
and exchanges.
"""

from __future__ import annotations

from torch import Tensor, nn


class AttentionAdapter(nn.Module):
    """Linear, Tanh, Linear, Softmax; the output gates the input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Softmax(dim=-1)
        )

    def forward(self, features: Tensor) -> Tensor:
        return features * self.attention(features)

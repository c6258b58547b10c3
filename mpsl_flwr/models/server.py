"""Server side: body ``W_b`` (timm ViT blocks) and tail ``W_t`` (pooling + task head)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class Encoder(nn.Module):
    """A stack of timm ViT blocks, as the authors build them; only the last ``k`` blocks train.

    Every block normalises with ``nn.LayerNorm`` (eps 1e-5; timm's own default is 1e-6).
    There is no final LayerNorm unless ``final_norm`` (then every output token is
    normalised; ``norm`` is the identity otherwise, and holds no tensors).

    Cut like timm's ``VisionTransformer``: ``blocks[:k]`` and ``blocks[k:]`` are plain
    slices, so a later strategy may run or exchange any part of it.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(depth)
        )
        self.norm: nn.Module = nn.LayerNorm(width) if final_norm else nn.Identity()
        # Layer-wise/progressive training runs only ``blocks[:run_depth]`` (None = all).
        self.run_depth: int | None = None
        self.apply(_init_weights)

    def set_trainable_blocks(self, k: int) -> None:
        """Freeze all but the last ``k`` blocks (a final norm trains when ``k > 0``)."""
        depth = len(self.blocks)
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= depth - k)
        self.norm.requires_grad_(k > 0)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks[: self.run_depth]:
            x = block(x)
        return self.norm(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class TokenReadout:
    """One vector per sample and stream: the mean of the encoder outputs at
    ``positions[stream]``, or over all of them where that is ``None``."""

    positions: Mapping[str, tuple[int, ...] | None]

    @classmethod
    def all_tokens(cls, streams: tuple[str, ...]) -> TokenReadout:
        """The earlier read-out: the CLS of an image or audio stream, the mean over every
        token of a text or fused stream."""
        return cls({s: (0,) if s in ("image", "audio") else None for s in streams})

    def __call__(self, tokens: Tensor, stream: str) -> Tensor:
        positions = self.positions[stream]
        if positions is None:
            return tokens.mean(dim=1)
        return tokens[:, list(positions)].mean(dim=1)


class MeanPool(nn.Module):
    """Global average pooling over the fused read-outs: one embedding per sample.

    With ``label-privacy=client-tail`` this is the whole server tail, and what it returns
    is what the loss leg sends each client.
    """

    def forward(self, readouts: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(list(readouts.values()), dim=0).mean(dim=0)


class ClassificationTail(nn.Module):
    """Global average pooling over the fused read-outs, then a linear classifier."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.pool = MeanPool()
        self.fc = nn.Linear(width, num_classes)
        nn.init.zeros_(self.fc.bias)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)

    def forward(self, readouts: Mapping[str, Tensor]) -> Tensor:
        return self.fc(self.pool(readouts))


class RetrievalTail(nn.Module):
    """Per-modality projection into a shared, L2-normalised embedding space.

    Returns ``[B, 2, E]``: row 0 the image embedding, row 1 the text embedding. The
    contrastive temperature is learned (CLIP), initialised from ``temperature``.
    """

    def __init__(self, width: int, embed_dim: int, pair: tuple[str, str], temperature: float):
        super().__init__()
        self.pair = pair
        projections = {m: nn.Linear(width, embed_dim, bias=False) for m in pair}
        for proj in projections.values():
            nn.init.trunc_normal_(proj.weight, std=width**-0.5)
        self.proj = nn.ModuleDict(projections)
        # Shape [1], not a scalar: Flower's array aggregation returns 0-d arrays as [1].
        self.logit_scale = nn.Parameter(torch.tensor([-math.log(temperature)]))

    def forward(self, readouts: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(
            [F.normalize(self.proj[m](readouts[m]), dim=-1) for m in self.pair], dim=1
        )


class ServerModel(nn.Module):
    """``W_b`` and ``W_t``: encodes each cut-layer stream once, reads one vector out of
    each (``readout``) and applies the task head to them."""

    def __init__(
        self,
        encoder: Encoder,
        tail: nn.Module,
        streams: tuple[str, ...],
        readout: TokenReadout,
        adapters: nn.ModuleDict | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tail = tail
        self.streams = streams
        self.readout = readout
        # FedCLIP: one adapter per stream, or one under the key "shared".
        self.adapters = adapters

    def forward(self, activations: Mapping[str, Tensor]) -> Tensor:
        missing = [s for s in self.streams if s not in activations]
        if missing:
            raise KeyError(f"activations lack stream(s) {missing}; expected {self.streams}.")
        readouts = {s: self.readout(self.encoder(activations[s]), s) for s in self.streams}
        if self.adapters is not None:
            readouts = {
                s: self.adapters[s if s in self.adapters else "shared"](r)
                for s, r in readouts.items()
            }
        return self.tail(readouts)

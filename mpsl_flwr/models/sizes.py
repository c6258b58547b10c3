"""ViT encoder sizes (timm's ViT-Ti/S/B/L/H)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSize:
    """Width, depth and heads of a ViT encoder."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


ENCODER_SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(width=192, depth=12, heads=3),
    "small": EncoderSize(width=384, depth=12, heads=6),
    "base": EncoderSize(width=768, depth=12, heads=12),
    "large": EncoderSize(width=1024, depth=24, heads=16),
    "huge": EncoderSize(width=1280, depth=32, heads=16),
}

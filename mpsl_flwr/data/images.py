"""Image preprocessing shared by photos and video frames: resize, crop, normalise.

Deterministic on purpose (no random crop or flip, at training time either): an MPSL
client recomputes its forward pass on the same batch when the gradient comes back, so
a sample must decode to the same tensor every time.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from PIL import Image

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

# Run-config 'image-norm' -> where its (mean, std) constants live. CLIP's suit
# Meta-Transformer (a CLIP-initialised ViT); ImageNet's suit most timm checkpoints;
# "inception" is 0.5/0.5 (timm's augreg ViTs, and the built-in data).
NORMALIZATIONS = {
    "clip": ("open_clip.constants", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD"),
    "imagenet": ("timm.data", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"),
    "inception": ("timm.data", "IMAGENET_INCEPTION_MEAN", "IMAGENET_INCEPTION_STD"),
}


def normalization(name: str, auto: str) -> Stats:
    """Mean and std of run-config ``image-norm``; ``"auto"`` stands for ``auto``.

    The constants are imported on first use: open_clip takes seconds to import.
    """
    name = auto if name == "auto" else name
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown image-norm {name!r}; use one of {list(NORMALIZATIONS)}.")
    module, mean, std = NORMALIZATIONS[name]
    constants = importlib.import_module(module)
    return tuple(getattr(constants, mean)), tuple(getattr(constants, std))


def fit_image(image: Image.Image, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]``: shorter side resized to ``size`` (bicubic), centre crop.

    CLIP's evaluation transform; the whole short side is kept, so nothing the question
    or caption mentions at the border of a square crop is cut more than necessary.
    """
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file as uint8 ``[size, size, 3]`` (see :func:`fit_image`)."""
    with Image.open(path) as image:
        # JPEG only: let libjpeg decode at the smallest power-of-two scale that is still
        # at least ``size`` on both sides; 2-4x faster than decoding full resolution.
        image.draft("RGB", (size, size))
        return fit_image(image, size)

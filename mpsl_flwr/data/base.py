"""What every dataset yields: the sample structure shared by built-in and real data.

A batch is a ``dict`` of tensors: ``"image"`` ``[B, 3, S, S]`` (normalised float),
``"audio"`` ``[B, T, 128]`` (normalised kaldi fbank), ``"text"`` ``[B, L]`` (int64
token ids) for the modalities the task uses, and ``"label"`` ``[B]`` (int64). For
classification the label is the class; for retrieval it is the pair id (the image a
caption belongs to), which only evaluation reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Kind = Literal["classification", "retrieval"]
MODALITIES = ("image", "audio", "text")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: task kind, modalities and input sizes."""

    name: str
    kind: Kind
    modalities: tuple[str, ...]
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int = 0
    audio_frames: int = 0
    text_length: int = 0
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; use {MODALITIES}.")
        if self.kind == "retrieval" and set(self.modalities) != {"image", "text"}:
            raise ValueError("retrieval is defined for image and text only.")


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[B, S, S, 3]`` -> float ``[B, 3, S, S]`` holding ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).float() * (1.0 / (255.0 * s)) - m / s


class MultimodalDataset(torch.utils.data.Dataset):
    """A dataset that can hand out a batch for any list of indices.

    ``partition_labels`` are what Dirichlet partitioning splits on: the class for
    classification, a documented pseudo-label for retrieval.
    """

    info: DatasetInfo

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def partition_labels(self) -> np.ndarray:
        return self.labels

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """Samples ``indices`` stacked into one batch dict."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.batch([index]).items()}


class TensorMultimodalDataset(MultimodalDataset):
    """In-memory dataset: images kept as uint8 and fbanks as float16 to halve memory."""

    def __init__(
        self,
        info: DatasetInfo,
        arrays: dict[str, Tensor],
        labels: np.ndarray,
        partition_labels: np.ndarray | None = None,
    ) -> None:
        self.info = info
        n = len(labels)
        for name, arr in arrays.items():
            if arr.shape[0] != n:
                raise ValueError(f"array '{name}' has {arr.shape[0]} rows, labels have {n}.")
        missing = set(info.modalities) - set(arrays)
        if missing:
            raise ValueError(f"arrays lack modalities {sorted(missing)}.")
        self.arrays = arrays
        self._labels = np.asarray(labels, dtype=np.int64)
        self._partition_labels = (
            self._labels if partition_labels is None else np.asarray(partition_labels)
        )

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def partition_labels(self) -> np.ndarray:
        return self._partition_labels

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        out: dict[str, Tensor] = {}
        for name in self.info.modalities:
            x = self.arrays[name].index_select(0, idx)
            if name == "image":
                x = normalize_images(x, self.info.image_mean, self.info.image_std)
            elif name == "audio":
                x = x.float()
            out[name] = x
        out["label"] = torch.from_numpy(self._labels[idx.numpy()])
        return out

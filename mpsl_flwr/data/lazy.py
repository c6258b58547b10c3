"""Real datasets, decoded lazily: an index of files and texts, decoded per batch.

A loader parses a dataset's official files into a :class:`SampleTable` (cheap, cached
per process); :class:`FileDataset` decodes only the samples a batch asks for. Several
samples may share one media file (COCO-QA asks several questions about one image,
retrieval has five captions per image), so decoded media are kept in a small LRU cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal, TypedDict

import av
import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import Tensor

from mpsl_flwr.data.audio import centred_window, fbank, read_audio_file, silence
from mpsl_flwr.data.base import DatasetInfo, MultimodalDataset, normalize_images
from mpsl_flwr.data.errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from mpsl_flwr.data.images import fit_image, load_image
from mpsl_flwr.data.text import tokenize
from mpsl_flwr.data.video import read_clip

log = logging.getLogger("mpsl_flwr")

MediaKind = Literal["image", "video"]
MEDIA_CACHE_SIZE = 256


@dataclass(frozen=True)
class SampleTable:
    """One split of a real dataset as file paths, texts and labels.

    ``media[media_of[i]]`` is sample ``i``'s image or video file; ``audio_files`` (when
    given, aligned with ``media``) holds separate audio files that replace the video's
    own track. ``labels`` are classes, or pair ids (image index) for retrieval.
    """

    labels: np.ndarray
    media: tuple[Path, ...]
    media_of: np.ndarray
    media_kind: MediaKind
    texts: tuple[str, ...] | None = None
    audio_files: tuple[Path | None, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.media_of) != n or (self.texts is not None and len(self.texts) != n):
            raise ValueError("labels, media_of and texts must have one entry per sample.")
        if self.audio_files is not None and len(self.audio_files) != len(self.media):
            raise ValueError("audio_files must have one entry per media file.")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> SampleTable:
        """The samples where the boolean mask ``keep`` is true; media files that no kept
        sample uses are dropped and ``media_of`` renumbered (labels are unchanged)."""
        if keep.all():
            return self
        kept = np.flatnonzero(keep)
        used, media_of = np.unique(self.media_of[kept], return_inverse=True)
        audio = self.audio_files
        return SampleTable(
            labels=self.labels[kept],
            media=tuple(self.media[i] for i in used),
            media_of=media_of.astype(np.int64),
            media_kind=self.media_kind,
            texts=None if self.texts is None else tuple(self.texts[i] for i in kept),
            audio_files=None if audio is None else tuple(audio[i] for i in used),
        )


class DecodedMedia(TypedDict, total=False):
    """One decoded media file: the fitted uint8 ``[H, W, 3]`` image and/or the float16
    ``[frames, 128]`` fbank of its audio, whichever modalities the dataset uses."""

    image: np.ndarray
    audio: Tensor


class FileDataset(MultimodalDataset):
    """A :class:`MultimodalDataset` over a :class:`SampleTable`, decoding on demand.

    ``proxy_labels`` (retrieval only) computes the documented pseudo-labels that
    Dirichlet partitioning splits on; it runs once, on first use.
    """

    def __init__(
        self,
        info: DatasetInfo,
        table: SampleTable,
        proxy_labels: Callable[[SampleTable], np.ndarray] | None = None,
    ) -> None:
        self.info = info
        self.table = table
        self._labels = np.asarray(table.labels, dtype=np.int64)
        self._proxy_labels = proxy_labels
        self._decode = lru_cache(maxsize=MEDIA_CACHE_SIZE)(self._decode_media)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @cached_property
    def partition_labels(self) -> np.ndarray:
        if self._proxy_labels is None:
            return self._labels
        return np.asarray(self._proxy_labels(self.table), dtype=np.int64)

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        decoded = [self._decode(int(self.table.media_of[i])) for i in idx]
        out: dict[str, Tensor] = {}
        for name in self.info.modalities:
            if name == "image":
                images = torch.from_numpy(np.stack([d["image"] for d in decoded]))
                out[name] = normalize_images(images, self.info.image_mean, self.info.image_std)
            elif name == "audio":
                out[name] = torch.stack([d["audio"] for d in decoded]).float()
            else:
                assert self.table.texts is not None
                texts = [self.table.texts[i] for i in idx]
                out[name] = tokenize(texts, self.info.text_length)
        out["label"] = torch.from_numpy(self._labels[idx])
        return out

    def _decode_media(self, m: int) -> DecodedMedia:
        path = self.table.media[m]
        try:
            return self._decode_file(m, path)
        except DatasetError:
            raise
        except FileNotFoundError as err:
            raise DatasetNotFoundError(
                f"{self.info.name}: missing file {err.filename or path}; the dataset index "
                "lists it. Is the dataset copy complete?"
            ) from err
        except (OSError, ValueError, RuntimeError, UnidentifiedImageError, av.FFmpegError) as err:
            raise DatasetFormatError(
                f"{self.info.name}: cannot decode {path}: {err}. Replace the file or "
                "remove it from the dataset's index files."
            ) from err

    def _decode_file(self, m: int, path: Path) -> DecodedMedia:
        want_image = "image" in self.info.modalities
        want_audio = "audio" in self.info.modalities
        if self.table.media_kind == "image":
            return {"image": load_image(path, self.info.image_size)}
        audio_file = self.table.audio_files[m] if self.table.audio_files else None
        clip = read_clip(path, frame=want_image, audio=want_audio and audio_file is None)
        out: DecodedMedia = {}
        if want_image:
            assert clip.frame is not None
            out["image"] = fit_image(clip.frame, self.info.image_size)
        if want_audio:
            frames = self.info.audio_frames
            wave, rate, centre = clip.audio, clip.sample_rate, clip.frame_time
            if audio_file is not None:
                wave, rate = read_audio_file(audio_file)
                if not want_image:
                    centre = len(wave) / rate / 2
            if wave is None or len(wave) == 0:  # no audio stream: silence, not an error
                wave, rate = silence(frames), 16_000
            window = centred_window(wave, rate, centre, frames)
            out["audio"] = fbank(window, frames, sample_rate=rate).to(torch.float16)
        return out

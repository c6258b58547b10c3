"""Audio features: 16 kHz mono waveform -> 128-bin kaldi fbank, normalised as in AST.

Real data also comes through here: a waveform at its own sample rate (read with
soundfile, or from a video's track), a window of it centred on the sample's moment,
resampled to 16 kHz by :func:`fbank` (torchaudio).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchaudio.compliance import kaldi

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
# AudioSet statistics used by AST; fbank values are mapped to roughly N(0, 0.5).
FBANK_MEAN = -4.2677393
FBANK_STD = 4.5689974


def fbank(waveform: Tensor | np.ndarray, frames: int, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """``[frames, 128]`` log-mel filterbank of a mono waveform, cropped or zero-padded."""
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1:
        raise ValueError(f"fbank() takes a mono waveform [samples]; got shape {list(wave.shape)}.")
    if sample_rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
    wave = wave - wave.mean()
    feats = kaldi.fbank(
        wave.unsqueeze(0),
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_shift=10,
    )
    if feats.shape[0] < frames:
        feats = torch.nn.functional.pad(feats, (0, 0, 0, frames - feats.shape[0]))
    feats = feats[:frames]
    return (feats - FBANK_MEAN) / (FBANK_STD * 2)


def frames_for_seconds(seconds: float) -> int:
    """Number of 10 ms fbank frames kaldi produces for ``seconds`` of audio (25 ms window)."""
    samples = round(seconds * SAMPLE_RATE)
    return 1 + (samples - 400) // 160


def window_samples(frames: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples at ``sample_rate`` that kaldi needs for ``frames`` fbank frames (25 ms/10 ms)."""
    return math.ceil((400 + (frames - 1) * 160) * sample_rate / SAMPLE_RATE)


def centred_window(wave: np.ndarray, sample_rate: int, centre_s: float, frames: int) -> np.ndarray:
    """The part of ``wave`` that ``frames`` fbank frames cover, centred on ``centre_s``.

    The window is shifted to stay inside the recording; a recording shorter than the
    window is returned whole (:func:`fbank` zero-pads the missing frames).
    """
    length = window_samples(frames, sample_rate)
    if len(wave) <= length:
        return wave
    start = round(centre_s * sample_rate) - length // 2
    start = min(max(start, 0), len(wave) - length)
    return wave[start : start + length]


def to_mono(samples: np.ndarray) -> np.ndarray:
    """float32 mono from ``[channels, samples]`` (or already mono) audio: channel mean."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=0) if samples.ndim == 2 else samples


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV/FLAC/OGG file as a float32 mono waveform and its sample rate (soundfile)."""
    import soundfile

    data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return to_mono(data.T), int(sample_rate)


def silence(frames: int) -> np.ndarray:
    """A zero waveform at 16 kHz as long as ``frames`` fbank frames (clips with no audio)."""
    return np.zeros(window_samples(frames), dtype=np.float32)

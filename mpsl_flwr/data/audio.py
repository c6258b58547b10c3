"""Audio features: 16 kHz mono waveform -> 128-bin kaldi fbank, normalised as in AST."""

from __future__ import annotations

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

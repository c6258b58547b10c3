"""Video clips decoded with PyAV: the middle frame and the audio track, in one open.

A video sample is one frame plus the audio around it. The frame is fixed, not drawn:
the first frame whose timestamp reaches half the video stream's duration (seek to the
preceding keyframe, decode forward). The audio track is decoded whole (clips are
seconds long), mixed to mono by channel mean; resampling to 16 kHz happens in
:func:`mpsl_flwr.data.audio.fbank`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mpsl_flwr.data.audio import to_mono


@dataclass
class Clip:
    """What :func:`read_clip` decoded; ``audio`` is None when the file has no audio stream."""

    frame: Image.Image | None
    frame_time: float
    audio: np.ndarray | None
    sample_rate: int
    duration: float


def has_audio(path: str | Path) -> bool:
    """Whether the container holds an audio stream (reads the header only)."""
    with av.open(str(path)) as container:
        return len(container.streams.audio) > 0


def read_clip(path: str | Path, frame: bool = True, audio: bool = True) -> Clip:
    """Decode the middle frame and/or the whole audio track of a video file."""
    with av.open(str(path)) as container:
        image, time, duration = None, 0.0, 0.0
        if frame:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            image, time, duration = _middle_frame(container, container.streams.video[0])
        wave, rate = None, 0
        if audio and container.streams.audio:
            container.seek(0)
            wave, rate = _audio_track(container, container.streams.audio[0])
            if not frame:
                duration = len(wave) / rate if rate else 0.0
                time = duration / 2
        return Clip(image, time, wave, rate, duration)


def _stream_span(
    container: av.container.InputContainer, stream: av.stream.Stream
) -> tuple[float, float | None]:
    """Start time and duration (seconds) of ``stream``, from its header when possible.

    A stream without a time base cannot convert its own timestamps: then its start is
    taken as 0 and the duration comes from the container (or None: unknown).
    """
    base = stream.time_base
    start = 0.0
    if base is not None and stream.start_time is not None:
        start = float(stream.start_time * base)
    if base is not None and stream.duration:
        return start, float(stream.duration * base)
    if container.duration:
        return start, container.duration / av.time_base
    return start, None


def _middle_frame(container, stream) -> tuple[Image.Image, float, float]:
    start, duration = _stream_span(container, stream)
    if duration is None:  # no duration in the header: count the frames once
        times = [f.time for f in container.decode(stream) if f.time is not None]
        if not times:
            raise ValueError("the video stream has no frames")
        start, duration = times[0], times[-1] - times[0]
        container.seek(0)
    target = start + duration / 2
    container.seek(round(target / stream.time_base), stream=stream, backward=True)
    chosen, first = _first_frame_at(container, stream, target)
    if first is not None and first > target + 1e-6:
        # The seek landed past the target (a broken index): decode from the start.
        container.seek(0)
        chosen, _ = _first_frame_at(container, stream, target)
    if chosen is None:
        raise ValueError("the video stream has no frames")
    return chosen.to_image(), float(chosen.time) - start, duration


def _first_frame_at(container, stream, target: float):
    """The first frame at or after ``target`` (else the last one) and the first time seen."""
    first, last = None, None
    for f in container.decode(stream):
        if f.time is None:
            continue
        first = f.time if first is None else first
        last = f
        if f.time >= target - 1e-9:
            break
    return last, first


def _audio_track(container, stream) -> tuple[np.ndarray, int]:
    resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
    chunks: list[np.ndarray] = []
    for frame in container.decode(stream):
        chunks.extend(g.to_ndarray() for g in resampler.resample(frame))
    chunks.extend(g.to_ndarray() for g in resampler.resample(None))
    rate = stream.rate or stream.codec_context.sample_rate
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return to_mono(np.concatenate(chunks, axis=1)), rate

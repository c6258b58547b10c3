"""Progress bars that read well both in a terminal and in ``flwr log`` streams.

In a terminal this is plain tqdm. Elsewhere (the ServerApp's output is streamed by
Flower, where carriage returns pile up into one endless line) tqdm writes one line at
most every ``interval`` seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm


class _Lines:
    """A file-like target that turns tqdm's carriage-return refreshes into lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any], desc: str, enabled: bool = True, interval: float = 15.0):
    """``tqdm(iterable)`` with a line-per-update fallback when stdout is not a TTY."""
    if sys.stdout.isatty():
        return tqdm(iterable, desc=desc, unit="step", disable=not enabled, mininterval=0.5)
    return tqdm(
        iterable,
        desc=desc,
        unit="step",
        disable=not enabled,
        mininterval=interval,
        maxinterval=interval * 4,
        ascii=True,
        ncols=100,
        file=_Lines(sys.stdout),
    )

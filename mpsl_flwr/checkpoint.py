"""Atomic run checkpoints, and what a resumed run needs from them.

A checkpoint is written at the end of every ``checkpoint-every``-th epoch into
``<run-dir>/checkpoint.pt``: written to a temporary file and flushed; the one it replaces
becomes ``checkpoint.prev.pt``, so a crash at any moment leaves a complete checkpoint,
and a latest one that does not read back (a bad disk, a truncated copy) is named and
resumed from the previous generation, with a warning.
It holds everything needed to continue as if nothing happened (torchtune's rule): the
server model, optimiser and scheduler, the completed epoch, the RNG states, the
aggregated client head, every client's own head and optimiser state (fetched with
``query.state``; the clients' ``context.state`` does not survive a new run), and the
history. ``resume=true`` (with the run's ``run-name``) continues from it.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from mpsl_flwr.config import ConfigError, RunConfig

log = logging.getLogger("mpsl_flwr")

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = 1
# Keys that may differ between the crashed run and its resumption: they change where the
# files go, how often they are written, how long to wait or how evaluation is batched,
# never what is trained (so a copied or moved run dir resumes too).
_MAY_CHANGE = {
    "resume",
    "progress",
    "step-timeout",
    "node-wait-timeout",
    "min-nodes",
    "eval-batch-size",
    "checkpoint-every",
    "run-name",
    "output-dir",
}


def rng_state() -> dict[str, Any]:
    """Torch, NumPy and Python RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    # The global RandomState is an MT19937, whose legacy state is this tuple.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


class CheckpointError(ConfigError):
    """The checkpoint to resume from is missing, unreadable or from another run."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount)."""


class Checkpointer:
    """Writes and reads ``<run-dir>/checkpoint.pt`` for one run.

    Its period comes from ``cfg.output``; it keeps the whole ``cfg`` because a resumed
    run must match the checkpointed one key for key.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig) -> None:
        self.path = Path(run_dir) / CHECKPOINT
        self.previous = Path(run_dir) / PREVIOUS
        self.tmp = Path(run_dir) / (CHECKPOINT + ".tmp")
        self.cfg = cfg
        self._loaded: dict[str, Any] | None = None
        # The latest checkpoint did not read back: the next save must not make it the
        # previous generation.
        self._latest_bad = False

    def due(self, epochs_done: int) -> bool:
        """Whether the end of this epoch is a checkpoint (the last epoch always is)."""
        every = self.cfg.output.checkpoint_every
        return every > 0 and (epochs_done % every == 0 or epochs_done == self.cfg.optim.epochs)

    def save(self, payload: dict[str, Any]) -> None:
        payload = {"format": FORMAT, "config": self.cfg.to_mapping(), **payload}
        tmp = self.tmp
        try:
            with tmp.open("wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException as err:
            # A partial file would keep a full disk full, and the run could not even
            # record why it failed.
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):
                then = (
                    "The previous checkpoint is intact: free space, then resume with resume=true."
                    if self.path.is_file()
                    else "No checkpoint was written before: free space and start again."
                )
                raise CheckpointWriteError(
                    err.errno,
                    f"Could not write the checkpoint after epoch {payload['epoch']} to "
                    f"{self.path}: {err.strerror or err}. {then}",
                ) from err
            raise
        if self.path.is_file() and not self._latest_bad:
            os.replace(self.path, self.previous)
        os.replace(tmp, self.path)
        self._latest_bad = False
        _fsync_dir(self.path.parent)
        log.info("Checkpoint after epoch %d: %s", payload["epoch"], self.path)

    def load(self) -> dict[str, Any]:
        """The checkpoint to resume from, checked against this run's config.

        Read once: a runner may check it before anything starts and use it later."""
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file() and not self.previous.is_file():
            raise CheckpointError(
                f"resume=true but there is no checkpoint at {self.path}. Set 'run-name' (and "
                "'output-dir') to those of the run to resume, or resume=false to start anew."
            )
        source = self.path
        try:
            payload = read_checkpoint(self.path)
        except CheckpointError as latest:
            payload, source = self._read_previous(latest), self.previous
        saved, now = payload["config"], self.cfg.to_mapping()
        changed = sorted(k for k in now if k not in _MAY_CHANGE and saved.get(k) != now[k])
        if changed:
            raise CheckpointError(
                f"Cannot resume {source}: run-config keys differ from the checkpointed run: "
                + ", ".join(f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in changed)
            )
        log.info("Resuming after epoch %d from %s", payload["epoch"], source)
        return payload

    def _read_previous(self, latest: CheckpointError) -> dict[str, Any]:
        """The previous generation, when the latest checkpoint does not read back."""
        if not self.previous.is_file():
            raise CheckpointError(
                f"{latest} There is no previous checkpoint ({self.previous}) to resume from: "
                "start anew with resume=false."
            )
        try:
            payload = read_checkpoint(self.previous)
        except CheckpointError as previous:
            raise CheckpointError(
                f"{latest} {previous} Nothing is left to resume from: start anew with resume=false."
            ) from None
        log.warning(
            "%s Resuming from %s (after epoch %d), one checkpoint earlier: the epochs "
            "after it are trained again.",
            latest,
            self.previous,
            payload["epoch"],
        )
        self._latest_bad = True
        return payload


def read_checkpoint(path: Path) -> dict[str, Any]:
    """One checkpoint file, read with ``weights_only=True`` (tensors and plain values only).

    A file that does not read back is named with what is wrong with it; torch's own
    message is left out on purpose, as it advises ``weights_only=False``, which would
    run whatever code a tampered file holds.
    """
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} is missing.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        what = (
            "holds objects other than tensors and plain values (refused: it was not "
            "written by this project, or was tampered with)"
            if "weights only" in str(err).lower()
            else f"is corrupt ({type(err).__name__})"
        )
        raise CheckpointError(f"Checkpoint {path} {what}.") from None
    except Exception as err:  # truncated zip, EOF, bad header: torch raises many kinds
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt ({type(err).__name__})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"Checkpoint {path} has format {found!r}, not {FORMAT}: it was written by another "
            "version of mpsl-flwr, or is not a checkpoint."
        )
    return payload


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a crash must not undo them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpointing:
    """What a strategy needs to checkpoint and resume a run: where, and the history."""

    checkpointer: Checkpointer
    history: Callable[[], list[dict[str, Any]]]
    restore_history: Callable[[list[dict[str, Any]]], None]

    @property
    def resume(self) -> bool:
        return self.checkpointer.cfg.output.resume

    def load(self, num_clients: int | None = None) -> dict[str, Any]:
        """The accepted checkpoint, its history restored.

        ``num_clients`` (a federated run's logical clients) must equal the checkpointed
        run's: each saved client state belongs to one data partition, and partitions
        change with the client count."""
        payload = self.checkpointer.load()
        if num_clients is not None:
            check_client_count(self.checkpointer.path, payload, num_clients)
        self.restore_history(payload["history"])
        # A run killed while writing leaves a partial file that only wastes space.
        self.checkpointer.tmp.unlink(missing_ok=True)
        return payload

    def save_if_due(self, epochs_done: int, payload: Callable[[], dict[str, Any]]) -> None:
        if self.checkpointer.due(epochs_done):
            self.checkpointer.save(
                {
                    "epoch": epochs_done,
                    "rng": rng_state(),
                    "history": self.history(),
                    **payload(),
                }
            )


def check_client_count(path: Path, payload: dict[str, Any], num_clients: int) -> None:
    """Refuse to resume ``payload`` (read from ``path``) with ``num_clients`` clients if the
    checkpointed run had another count (checkpoints without the count tell it by their
    saved client states)."""
    saved = payload.get("num-clients", len(payload.get("clients", {})) or None)
    if saved is not None and int(saved) != num_clients:
        raise CheckpointError(
            f"Cannot resume {path}: the checkpointed run had {saved} clients, this one has "
            f"{num_clients}. Resume with as many nodes (and clients-per-node) as the original "
            "run, or start a new run with resume=false."
        )

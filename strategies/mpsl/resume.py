"""What an MPSL checkpoint holds, and how a resumed run picks up from it.

The server side (model, optimiser, scheduler, aggregated head) is in the ServerApp's
hands; every client's own head and optimiser state lives in its node's
``context.state``, which does not survive a new run, so a checkpoint fetches them with
``query.state`` and a resumed run hands each client its state back with its first
``train.forward`` (:mod:`mpsl_flwr.checkpoint` writes and reads the file atomically).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mpsl_flwr.checkpoint import set_rng_state
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.models.split_model import load_trainable_state, trainable_state

log = logging.getLogger("mpsl_flwr")


_RESUMING_INCOMPLETE = (
    "Resuming from it restarts those clients' heads from the aggregated head "
    "(head-sync=push) or their initial head (keep), with a fresh optimiser, so the "
    "resumed run will not equal an uninterrupted one."
)


def checkpoint_payload(
    epoch: int,
    server_model: ServerModel,
    head: ClientHead,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clients: dict[int, dict[str, object]],
    expected: set[int],
) -> dict[str, Any]:
    """Server side and every client's state; a client that did not answer marks the
    checkpoint ``incomplete`` (with a warning that says what resuming from it means)."""
    missing = sorted(expected - set(clients))
    if missing:
        log.warning(
            "Checkpoint after epoch %d is incomplete: no state of clients %s (no answer, "
            "asked twice). %s",
            epoch,
            missing,
            _RESUMING_INCOMPLETE,
        )
    return {
        "server": server_model.state_dict(),
        "head": trainable_state(head),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "clients": clients,
        "num-clients": len(expected),
        "incomplete": missing,
    }


def restore(
    ckpt: dict[str, Any],
    server_model: ServerModel,
    head: ClientHead,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[int, dict[str, object]]]:
    """Load the server side and the RNGs; return the first epoch to run and the client
    states still to hand back."""
    server_model.load_state_dict(ckpt["server"])
    load_trainable_state(head, ckpt["head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    if ckpt.get("incomplete"):
        log.warning(
            "The checkpoint after epoch %d holds no state of clients %s. %s",
            ckpt["epoch"],
            ckpt["incomplete"],
            _RESUMING_INCOMPLETE,
        )
    clients = {int(cid): parts for cid, parts in ckpt["clients"].items()}
    return int(ckpt["epoch"]), clients

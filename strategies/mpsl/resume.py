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


def checkpoint_payload(
    server_model: ServerModel,
    head: ClientHead,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clients: dict[int, dict[str, object]],
    expected: set[int],
) -> dict[str, Any]:
    """Server side and every client's state; warns about clients that did not answer."""
    missing = sorted(expected - set(clients))
    if missing:
        log.warning("Checkpoint lacks the state of clients %s (no answer).", missing)
    return {
        "server": server_model.state_dict(),
        "head": trainable_state(head),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "clients": clients,
        "num-clients": len(expected),
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
    clients = {int(cid): parts for cid, parts in ckpt["clients"].items()}
    return int(ckpt["epoch"]), clients

"""What a run needs of the machine it starts on, checked before anything starts.

:class:`~mpsl_flwr.config.RunConfig` checks the keys alone and
:meth:`~mpsl_flwr.experiment.Experiment.from_config` checks them against the dataset
(on the server and every node alike; a real dataset's ``data-dir`` is opened there).
What is left depends on a machine: the ``pretrained`` file (and that it fits the model),
the devices asked for, and enough training samples for the clients. The ServerApp
checks its own side before it writes anything (:func:`check_server`, and
:func:`check_partitions` for the nodes already connected; whether the checkpoint fits
shows when it loads it); the launchers (``mpsl-run``, ``mpsl-deploy``) check everything
on their machine, which in a simulation is every client's machine too, before any
process starts (:func:`preflight`, which also loads the checkpoint into a meta-device
model), so that a bad value fails in a second rather than minutes into a run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mpsl_flwr.config import ConfigError, RunConfig, range_error
from mpsl_flwr.data.registry import train_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.models.checkpoints import load_pretrained
from mpsl_flwr.models.split_model import build_head, build_server
from mpsl_flwr.optim import resolve_device


def check_pretrained(cfg: RunConfig) -> None:
    """``pretrained`` names an existing file (or is empty: random initialisation)."""
    if not cfg.pretrained:
        return
    path = Path(cfg.pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Run-config key 'pretrained' names no file: {cfg.pretrained!r} (here: "
            f"{path.absolute()}). Fix: an absolute path to a local checkpoint (nothing is "
            'downloaded), or pretrained="" for random initialisation.'
        )


def check_checkpoint_fits(exp: Experiment) -> None:
    """The ``pretrained`` checkpoint loads into the model: its width and depth match, and
    it leaves no tensor random unless ``pretrained-allow-random``. Loaded into a model on
    the ``meta`` device, so no model weights are made (the checkpoint is still read)."""
    model = exp.cfg.model
    if not model.pretrained:
        return
    with torch.device("meta"):
        head, server = build_head(exp.spec), build_server(exp.spec)
    with warnings.catch_warnings():
        # Copying into meta tensors is a no-op, as meant here; torch warns of each one.
        warnings.simplefilter("ignore", UserWarning)
        load_pretrained(
            model.pretrained,
            model.pretrained_format,
            head,
            server,
            allow_random=model.pretrained_allow_random,
        )


def check_server(cfg: RunConfig) -> Experiment:
    """The run's setup, and what the server's machine must have: a GPU for
    ``server-device=cuda``, the ``pretrained`` file."""
    exp = Experiment.from_config(cfg)
    resolve_device(cfg.server_device, "server-device")
    check_pretrained(cfg)
    return exp


def check_partitions(exp: Experiment, num_clients: int) -> None:
    """``num_clients`` logical clients can each get a partition of the training split."""
    cfg = exp.cfg
    samples = train_size(cfg.data)
    if num_clients > samples:
        raise ConfigError(
            f"{num_clients} clients but dataset={cfg.dataset} has {samples} training samples: "
            "each client needs at least one. Fix: fewer nodes (or clients-per-node), or more "
            "data (synthetic-train-size)."
        )
    # The rule of the Dirichlet partitioner over labels (mpsl_flwr.data.partition).
    dirichlet = num_clients > 1 and not exp.task.labels_are_pair_ids
    if dirichlet and num_clients * cfg.min_partition_size > samples:
        most = samples // num_clients
        raise range_error(
            "min_partition_size",
            cfg.min_partition_size,
            f"at most {most} for {num_clients} clients of {samples} training samples",
            f"min-partition-size={most}, or fewer clients",
        )


def preflight(cfg: RunConfig, num_clients: int) -> Experiment:
    """Every check a launcher can make on its own machine before it starts a process,
    for ``num_clients`` logical clients that run on this machine too (a simulation, or
    SuperNodes on loopback)."""
    exp = check_server(cfg)
    check_checkpoint_fits(exp)
    resolve_device(cfg.client_device, "client-device")
    check_partitions(exp, num_clients)
    return exp

"""``mpsl-label-attack``: how many training labels a curious MPSL server can infer.

    mpsl-label-attack                                      # V+T task, 10 clients, epoch 1
    mpsl-label-attack --run-config "dataset=synthetic-at" --epochs-attacked 1,3 --steps 5

It runs a short, real MPSL run over :class:`~mpsl_flwr.local_grid.LocalGrid` (in process:
real Flower messages to the real ClientApp, ``clients.client_app.app``, with each node's
``context.state`` kept as on a SuperNode), wrapped in a
:class:`~mpsl_flwr.privacy.recording.RecordingGrid` that keeps what the server receives in
the first ``--steps`` steps of the ``--epochs-attacked`` epochs (it adds no message and
changes no weight). It then runs every attack of :mod:`mpsl_flwr.privacy.attacks` that
applies to those records and scores it against the true labels, read from the partitions
outside the protocol (:mod:`mpsl_flwr.privacy.truth`):

* **gradient sign** on the ``train.loss`` replies (``dL_n/dz_n``);
* **inversion with a known tail**: only when the classifier lives on the client; while
  the tail is on the server it is reported as not applicable, with no number;
* **clustering** (Liu and Lyu 2022, best one-to-one matching: an upper bound) on the
  ``train.loss`` replies and on the cut-layer gradients the server computes from them.

It writes ``label-attack.json`` and ``label-attack.md`` under ``--out`` and prints the
table. Retrieval has no labels and is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.client_app import app as client_app
from mpsl_flwr.config import RunConfig, resolve_config
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.privacy import attacks
from mpsl_flwr.privacy.recording import (
    Observation,
    RecordingGrid,
    cut_gradients,
    loss_gradients,
    stacked,
)
from mpsl_flwr.privacy.truth import LabelOracle, true_labels
from mpsl_flwr.protocol import mpsl as P
from strategies.mpsl import MPSL

NOT_APPLICABLE_TAIL = "not applicable (the tail is on the server)"


class NotAttackableError(ValueError):
    """The requested run has nothing a label attack could target."""


@dataclass
class AttackRow:
    """One attack on one attacked epoch: what it attacked and how much it recovered."""

    attack: str
    target: str
    epoch: int  # from 1, as in history.csv
    steps: list[int]  # from 1
    samples: int
    recovery_rate: float | None
    chance_rate: float | None
    note: str = ""


# ------------------------------------------------------------------ the run
def attack_config(overrides: dict[str, Any], epochs_attacked: Sequence[int]) -> RunConfig:
    """The run to attack: ``overrides`` on the project defaults, MPSL, long enough to
    reach the last attacked epoch (``epochs`` defaults to it), quiet.

    Raises :class:`NotAttackableError` for a retrieval task or another strategy.
    """
    if not epochs_attacked or min(epochs_attacked) < 1:
        raise NotAttackableError(
            f"--epochs-attacked must list epochs from 1, got {list(epochs_attacked)}."
        )
    values = {"epochs": max(epochs_attacked), "progress": False, **overrides}
    if values.get("strategy", "mpsl") != "mpsl":
        raise NotAttackableError(
            f"strategy={values['strategy']}: the attacks target MPSL's loss leg; "
            "drop 'strategy' from --run-config."
        )
    cfg = resolve_config({**values, "strategy": "mpsl"})
    if cfg.epochs < max(epochs_attacked):
        raise NotAttackableError(
            f"epochs={cfg.epochs} ends before attacked epoch {max(epochs_attacked)}: "
            "raise 'epochs' or attack earlier epochs."
        )
    exp = Experiment.from_config(cfg)
    if not exp.task.labels_on_client:
        raise NotAttackableError(
            f"dataset={cfg.dataset} is a {exp.info.kind} task: it has no labels to infer "
            "(the server computes its loss itself); choose a classification dataset, "
            "e.g. dataset=synthetic-vqa."
        )
    return cfg


def recorded_run(
    cfg: RunConfig, nodes: int, epochs_attacked: Sequence[int], steps: int
) -> RecordingGrid:
    """Train ``cfg`` with MPSL over ``nodes`` in-process nodes, recording the loss and
    backward legs of the first ``steps`` steps of each attacked epoch (from 1)."""
    local = LocalGrid(client_app, nodes, cfg.to_mapping(), seed=cfg.seed)
    grid = RecordingGrid(
        local,
        epochs={e - 1 for e in epochs_attacked},
        steps=steps,
        message_types=(P.LOSS, P.BACKWARD),
    )
    MPSL(Experiment.from_config(cfg)).start(grid)
    return grid


# ------------------------------------------------------------------ the attacks
Attack = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, labels) -> predicted


def _score(
    name: str,
    target: str,
    observations: list[Observation],
    oracle: LabelOracle,
    attack: Attack,
) -> list[AttackRow]:
    """One row per epoch: ``attack`` over every recorded sample of that epoch."""
    rows = []
    for epoch in sorted({o.epoch for o in observations}):
        mine = [o for o in observations if o.epoch == epoch]
        y = true_labels(oracle, mine)
        predicted = attack(stacked(mine), y)
        rows.append(
            AttackRow(
                name,
                target,
                epoch + 1,
                sorted({o.step + 1 for o in mine}),
                int(y.size),
                attacks.recovery_rate(predicted, y),
                attacks.chance_rate(y),
            )
        )
    return rows


def run_attacks(
    grid: RecordingGrid, oracle: LabelOracle, num_classes: int, seed: int = 0
) -> list[AttackRow]:
    """Every attack that applies to what ``grid`` recorded, scored; the others named."""
    loss = loss_gradients(grid)
    cut = cut_gradients(grid)
    if not loss:
        raise NotAttackableError(
            "no train.loss reply was recorded: the attacked steps are past the end of the "
            "epoch or no client answered; lower --steps or check the run's log."
        )
    logits = all(o.arrays["out"].shape[1:] == (num_classes,) for o in loss)
    epochs = sorted({o.epoch + 1 for o in loss})

    def cluster(features: np.ndarray, y: np.ndarray) -> np.ndarray:
        return attacks.clustering_attack(features, y, num_classes, seed=seed)

    rows: list[AttackRow] = []
    target = "train.loss reply grad.<cid> (dL_n/dz_n)"
    if logits:
        rows += _score(
            "gradient-sign", target, loss, oracle, lambda x, _y: attacks.gradient_sign(x)
        )
        rows += [
            AttackRow("known-tail-inversion", target, e, [], 0, None, None, NOT_APPLICABLE_TAIL)
            for e in epochs
        ]
    else:
        reason = "not applicable (the loss-leg replies are not logit gradients)"
        rows += [AttackRow("gradient-sign", target, e, [], 0, None, None, reason) for e in epochs]
    rows += _score("clustering", target, loss, oracle, cluster)
    if cut:
        rows += _score(
            "clustering",
            "cut-layer gradients cut.<cid> (computed by the server, flattened)",
            cut,
            oracle,
            cluster,
        )
    return rows


# ------------------------------------------------------------------ the report
def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _steps(steps: list[int]) -> str:
    if not steps:
        return "-"
    return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0])


def markdown(rows: list[AttackRow]) -> str:
    """The rows as a Markdown table (recovery and chance as fractions of the samples)."""
    lines = [
        "| attack | target | epoch | steps | samples | recovery | chance (majority) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = r.note if r.recovery_rate is None else _rate(r.recovery_rate)
        lines.append(
            f"| {r.attack} | {r.target} | {r.epoch} | {_steps(r.steps)} | {r.samples} | "
            f"{recovery} | {_rate(r.chance_rate)} |"
        )
    return "\n".join(lines)


def write_report(out: Path, cfg: RunConfig, nodes: int, steps: int, rows: list[AttackRow]) -> None:
    """``label-attack.json`` (the run and every row) and ``label-attack.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "dataset": cfg.dataset,
        "nodes": nodes,
        "clients": nodes * cfg.clients_per_node,
        "epochs": cfg.epochs,
        "steps-attacked": steps,
        "batch-size": cfg.batch_size,
        "dirichlet-alpha": cfg.dirichlet_alpha,
        "model-size": cfg.model_size,
        "seed": cfg.seed,
        "grid": "LocalGrid (in process, real Flower messages, the real ClientApp)",
    }
    payload = {"run": run, "config": cfg.to_mapping(), "attacks": [asdict(r) for r in rows]}
    (out / "label-attack.json").write_text(json.dumps(payload, indent=2) + "\n")
    header = (
        f"# Label inference on MPSL: {cfg.dataset}, {run['clients']} clients, "
        f"Dirichlet {cfg.dirichlet_alpha}, global batch {cfg.batch_size}\n\n"
        "Recovery: fraction of the attacked samples whose label the attack got right; "
        "chance: the majority class of those samples. Clustering is scored with the best "
        "one-to-one cluster-to-label matching (an upper bound).\n\n"
    )
    (out / "label-attack.md").write_text(header + markdown(rows) + "\n")


def run(args: argparse.Namespace) -> int:
    """``mpsl-label-attack`` with the arguments :func:`mpsl_flwr.cli.label_attack` parsed.

    Raises :class:`NotAttackableError` (the CLI prints it as one line) before anything trains.
    """
    logging.getLogger("mpsl_flwr").setLevel(logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    cfg = attack_config(args.overrides, args.epochs_attacked)
    grid = recorded_run(cfg, args.nodes, args.epochs_attacked, args.steps)
    info = Experiment.from_config(cfg).info
    oracle = LabelOracle(cfg.data, args.nodes * cfg.clients_per_node, cfg.seed)
    rows = run_attacks(grid, oracle, info.num_classes, seed=cfg.seed)
    write_report(args.out, cfg, args.nodes, args.steps, rows)
    print(markdown(rows))
    print(f"Wrote {args.out / 'label-attack.json'} and {args.out / 'label-attack.md'}")
    return 0

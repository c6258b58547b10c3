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
* **inversion with a known tail** (``label-privacy=client-tail``): on the gradients at the
  pooled embeddings the server sent, with the classifier the server last aggregated
  (the initial one in epoch 1); while the tail is on the server it is reported as not
  applicable, with no number (and gradient sign likewise under a client tail);
* under label-dp, **prior decoding** on top of the best of those: each inferred (noisy)
  label decoded with its client's label histogram, estimated from the noisy labels;
* **clustering** (Liu and Lyu 2022, best one-to-one matching: an upper bound) on the
  ``train.loss`` replies and on the cut-layer gradients the server computes from them.

Under ``label-dp`` each row also gives the bound no attacker can beat on those samples
(:meth:`~mpsl_flwr.privacy.label_dp.RandomizedResponse.attack_bound`, with each client's
label histogram as the attacker's prior). Each node gets a fixed ``label-dp-seed`` (from
the run's seed), so a measurement can be repeated; the attacks never read it.

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
from mpsl_flwr.config import ConfigError, RunConfig, resolve_config
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.models.head import ClientHead
from mpsl_flwr.models.server import ServerModel
from mpsl_flwr.privacy import attacks
from mpsl_flwr.privacy.label_dp import RandomizedResponse
from mpsl_flwr.privacy.recording import (
    Observation,
    RecordingGrid,
    cut_gradients,
    loss_exchanges,
    stacked,
)
from mpsl_flwr.privacy.truth import LabelOracle, true_labels
from mpsl_flwr.protocol import mpsl as P
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.tools.logs import quiet
from strategies.mpsl import MPSL

NOT_APPLICABLE_TAIL = "not applicable (the tail is on the server)"
NOT_APPLICABLE_SIGN = (
    "not applicable (the loss-leg replies are gradients at the client tail's input)"
)


class NotAttackableError(ConfigError):
    """The requested run has nothing a label attack could target (a config problem:
    the CLI shows it as one line, as every :class:`ConfigError`)."""


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
    bound: float | None = None  # label-dp: the most any attacker can recover


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


@dataclass
class AttackedRun:
    """A recorded run: what the server received, the classifier it knew at the start of
    each epoch (client tail: the last aggregate), and the run's history rows."""

    grid: RecordingGrid
    known_tails: dict[int, tuple[np.ndarray, np.ndarray]]  # epoch (from 0) -> (W, bias)
    history: list[EpochRecord]


def label_dp_seed(run_seed: int, node: int) -> int:
    """The ``label-dp-seed`` node config of an attacked run's node: fixed, so that the
    measurement is reproducible (the attacks never read it)."""
    return int(np.random.SeedSequence([run_seed, node, 0x1ABE1]).generate_state(1)[0])


def recorded_run(
    cfg: RunConfig,
    nodes: int,
    epochs_attacked: Sequence[int],
    steps: int,
    evaluate: bool = False,
) -> AttackedRun:
    """Train ``cfg`` with MPSL over ``nodes`` in-process nodes, recording the loss and
    backward legs of the first ``steps`` steps of each attacked epoch (from 1); with
    ``evaluate``, the last epoch is evaluated on the test split (``history[-1].test``)."""
    node_configs = [
        {"partition-id": i, "num-partitions": nodes, "label-dp-seed": label_dp_seed(cfg.seed, i)}
        for i in range(nodes)
    ]
    local = LocalGrid(client_app, nodes, cfg.to_mapping(), node_configs, seed=cfg.seed)
    grid = RecordingGrid(
        local,
        epochs={e - 1 for e in epochs_attacked},
        steps=steps,
        message_types=(P.LOSS, P.BACKWARD),
    )
    exp = Experiment.from_config(cfg)
    mpsl = MPSL(exp)
    tails = {0: _classifier(mpsl.head)} if mpsl.head.classifier is not None else {}
    history: list[EpochRecord] = []

    def on_epoch_end(record: EpochRecord) -> None:
        history.append(record)
        if mpsl.head.classifier is not None:
            tails[record.epoch] = _classifier(mpsl.head)  # known from epoch record.epoch on

    def evaluate_last(epoch: int, head: ClientHead, server: ServerModel) -> dict[str, Any]:
        return exp.evaluate(head, server) if epoch >= cfg.epochs else {}

    mpsl.start(grid, evaluate_last if evaluate else None, on_epoch_end)
    return AttackedRun(grid, tails, history)


def _classifier(head: ClientHead) -> tuple[np.ndarray, np.ndarray]:
    assert head.classifier is not None
    weight, bias = head.classifier.get_parameter("weight"), head.classifier.get_parameter("bias")
    return weight.detach().double().numpy().copy(), bias.detach().double().numpy().copy()


# ------------------------------------------------------------------ the attacks
Attack = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, labels) -> predicted


def _score(
    name: str,
    target: str,
    observations: list[Observation],
    oracle: LabelOracle,
    attack: Callable[[list[Observation], np.ndarray], np.ndarray],
    rr: RandomizedResponse | None,
) -> list[AttackRow]:
    """One row per epoch: ``attack`` over every recorded sample of that epoch."""
    rows = []
    for epoch in sorted({o.epoch for o in observations}):
        mine = [o for o in observations if o.epoch == epoch]
        y = true_labels(oracle, mine)
        predicted = attack(mine, y)
        rows.append(
            AttackRow(
                name,
                target,
                epoch + 1,
                sorted({o.step + 1 for o in mine}),
                int(y.size),
                attacks.recovery_rate(predicted, y),
                attacks.chance_rate(y),
                bound=None if rr is None else _dp_bound(rr, mine, y),
            )
        )
    return rows


def _dp_bound(rr: RandomizedResponse, observed: list[Observation], y: np.ndarray) -> float:
    """The label-DP bound on these samples, for an attacker who knows each client's
    exact label histogram (the strongest prior): sample-weighted over clients."""
    cids = np.concatenate([np.full(o.num_samples, o.cid) for o in observed])
    total = 0.0
    for cid in np.unique(cids):
        mine = y[cids == cid]
        prior = np.bincount(mine, minlength=rr.num_classes) / mine.size
        total += rr.attack_bound(prior) * mine.size
    return total / y.size


def run_attacks(
    run: AttackedRun,
    oracle: LabelOracle,
    num_classes: int,
    seed: int = 0,
    rr: RandomizedResponse | None = None,
) -> list[AttackRow]:
    """Every attack that applies to what ``run`` recorded, scored; the others named.

    ``rr``: the run's randomized response (label-dp), for the bound column.
    """
    exchanges = loss_exchanges(run.grid)
    loss = [grad for _, grad in exchanges]
    cut = cut_gradients(run.grid)
    if not loss:
        raise NotAttackableError(
            "no train.loss reply was recorded: the attacked steps are past the end of the "
            "epoch or no client answered; lower --steps or check the run's log."
        )
    epochs = sorted({o.epoch + 1 for o in loss})

    def cluster(observed: list[Observation], y: np.ndarray) -> np.ndarray:
        return attacks.clustering_attack(stacked(observed), y, num_classes, seed=seed)

    def sign(observed: list[Observation], _y: np.ndarray) -> np.ndarray:
        return attacks.gradient_sign(stacked(observed))

    sent = {(o.epoch, o.step, o.cid): o for o, _ in exchanges}

    def invert(observed: list[Observation], _y: np.ndarray) -> np.ndarray:
        weight, bias = run.known_tails[observed[0].epoch]
        return np.concatenate(
            [
                attacks.known_tail_inversion(
                    o.arrays["out"],
                    weight,
                    bias,
                    sent[(o.epoch, o.step, o.cid)].arrays["out"],
                    o.plan.size,
                )
                for o in observed
            ]
        )

    def not_applicable(name: str, reason: str) -> list[AttackRow]:
        return [AttackRow(name, target, e, [], 0, None, None, reason) for e in epochs]

    rows: list[AttackRow] = []
    target = "train.loss reply grad[client rows] (dL_n/dz_n)"
    if run.known_tails:
        rows += not_applicable("gradient-sign", NOT_APPLICABLE_SIGN)
        rows += _score("known-tail-inversion", target, loss, oracle, invert, rr)
    else:
        rows += _score("gradient-sign", target, loss, oracle, sign, rr)
        rows += not_applicable("known-tail-inversion", NOT_APPLICABLE_TAIL)
    if rr is not None:
        infer = invert if run.known_tails else sign

        def decode(observed: list[Observation], y: np.ndarray) -> np.ndarray:
            cids = np.concatenate([np.full(o.num_samples, o.cid) for o in observed])
            return attacks.prior_decoding(
                infer(observed, y), cids, rr.keep_probability, num_classes
            )

        name = "known-tail-inversion" if run.known_tails else "gradient-sign"
        rows += _score(f"{name}+prior-decoding", target, loss, oracle, decode, rr)
    rows += _score("clustering", target, loss, oracle, cluster, rr)
    if cut:
        rows += _score(
            "clustering",
            "cut-layer gradients cut[client rows] (computed by the server, flattened)",
            cut,
            oracle,
            cluster,
            rr,
        )
    return rows


def best_attack(rows: list[AttackRow]) -> AttackRow:
    """The row with the highest recovery (the attacker picks the best attack)."""
    scored = [r for r in rows if r.recovery_rate is not None]
    return max(scored, key=lambda r: r.recovery_rate or 0.0)


def randomized_response(cfg: RunConfig, num_classes: int) -> RandomizedResponse | None:
    """The run's label-dp mechanism over its ``num_classes`` (None without label-dp)."""
    if not cfg.privacy.label_dp:
        return None
    return RandomizedResponse(cfg.label_epsilon, num_classes)


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
        "| attack | target | epoch | steps | samples | recovery | chance (majority) "
        "| label-DP bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = r.note if r.recovery_rate is None else _rate(r.recovery_rate)
        lines.append(
            f"| {r.attack} | {r.target} | {r.epoch} | {_steps(r.steps)} | {r.samples} | "
            f"{recovery} | {_rate(r.chance_rate)} | {_rate(r.bound)} |"
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
        "label-privacy": cfg.label_privacy,
        "label-epsilon": cfg.label_epsilon if cfg.privacy.label_dp else None,
        "seed": cfg.seed,
        "grid": "LocalGrid (in process, real Flower messages, the real ClientApp)",
    }
    payload = {"run": run, "config": cfg.to_mapping(), "attacks": [asdict(r) for r in rows]}
    (out / "label-attack.json").write_text(json.dumps(payload, indent=2) + "\n")
    header = (
        f"# Label inference on MPSL: {cfg.dataset}, {run['clients']} clients, "
        f"Dirichlet {cfg.dirichlet_alpha}, global batch {cfg.batch_size}, "
        f"label-privacy={cfg.label_privacy}"
        + (f" (epsilon {cfg.label_epsilon:g})" if cfg.privacy.label_dp else "")
        + "\n\n"
        "Recovery: fraction of the attacked samples whose label the attack got right; "
        "chance: the majority class of those samples. Clustering is scored with the best "
        "one-to-one cluster-to-label matching (an upper bound). Label-DP bound: the most "
        "any attacker can recover under randomized response, knowing each client's label "
        "histogram.\n\n"
    )
    (out / "label-attack.md").write_text(header + markdown(rows) + "\n")


def run(args: argparse.Namespace) -> int:
    """``mpsl-label-attack`` with the arguments :func:`mpsl_flwr.cli.label_attack` parsed.

    Raises :class:`NotAttackableError` (the CLI prints it as one line) before anything trains.
    """
    with quiet(logging.WARNING):
        cfg = attack_config(args.overrides, args.epochs_attacked)
        recorded = recorded_run(cfg, args.nodes, args.epochs_attacked, args.steps)
        info = Experiment.from_config(cfg).info
        oracle = LabelOracle(cfg.data, args.nodes * cfg.clients_per_node, cfg.seed)
        rr = randomized_response(cfg, info.num_classes)
        rows = run_attacks(recorded, oracle, info.num_classes, cfg.seed, rr)
        write_report(args.out, cfg, args.nodes, args.steps, rows)
        print(markdown(rows))
        print(f"Wrote {args.out / 'label-attack.json'} and {args.out / 'label-attack.md'}")
        return 0

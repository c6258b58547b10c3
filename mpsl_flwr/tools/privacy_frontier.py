"""``mpsl-privacy-frontier``: test accuracy against the best label attack, per defence.

    mpsl-privacy-frontier                                   # the published figure
    mpsl-privacy-frontier --seeds 0 --tasks synthetic-vqa   # a quick look

For every task, ``label-privacy`` setting and seed it trains one real MPSL run over
``LocalGrid`` (in process, real Flower messages, the real ClientApp), recorded by
:func:`~mpsl_flwr.tools.label_attack.recorded_run` in the first ``--steps`` steps of the
first and last epochs, evaluates it on the test split, and runs every label attack on
what the server received (:func:`~mpsl_flwr.tools.label_attack.run_attacks`). Per run it
keeps: test accuracy, the best attack's recovery and its name, chance (majority class of
the attacked samples), the label-DP bound where one exists, client parameters and
GFLOPs per sample (:mod:`mpsl_flwr.costs`), and MB per client per epoch (the meter).

Results go to ``--out``: ``runs.jsonl`` (one line per finished run, appended as it
finishes, so an interrupted sweep continues where it stopped), ``frontier.csv`` and
``frontier.md`` (mean +- std over seeds) and ``frontier.png`` (accuracy against best-attack
recovery, one point per setting and task, with chance marked).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mpsl_flwr.config import resolve_config
from mpsl_flwr.costs import measure
from mpsl_flwr.data.registry import dataset_info
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.privacy.truth import LabelOracle
from mpsl_flwr.progress import progress
from mpsl_flwr.tools.label_attack import (
    attack_config,
    best_attack,
    randomized_response,
    recorded_run,
    run_attacks,
)
from mpsl_flwr.tools.logs import quiet

SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("none", None),
    ("client-tail", None),
    ("label-dp", 1.0),
    ("label-dp", 2.0),
    ("label-dp", 4.0),
    ("label-dp", 8.0),
    ("client-tail+label-dp", 2.0),
)
"""(``label-privacy``, ``label-epsilon``) of the published sweep."""

TASKS = ("synthetic-vqa", "synthetic-at")
SMALL_RUN = {
    "synthetic-train-size": 1000,
    "synthetic-test-size": 300,
    "epochs": 3,
    "encoder-depth": 4,
}
"""What each run trains unless ``--run-config`` says otherwise: 42 runs sized for 2 CPU
cores (a 4-block ViT-Ti encoder; global batch 64 over 10 clients, b_n = 7)."""


def setting_name(privacy: str, epsilon: float | None) -> str:
    return privacy if epsilon is None else f"{privacy} eps={epsilon:g}"


@dataclass
class FrontierRun:
    """One run of the sweep."""

    task: str
    setting: str
    label_privacy: str
    label_epsilon: float | None
    seed: int
    test_accuracy: float
    best_attack: str
    best_recovery: float
    chance: float
    bound: float | None
    client_params: int
    client_gflops_fwd_bwd: float
    mb_per_client_epoch: float


def one_run(
    task: str,
    privacy: str,
    epsilon: float | None,
    seed: int,
    base: dict[str, Any],
    nodes: int,
    steps: int,
) -> FrontierRun:
    """Train, evaluate and attack one setting of one task with one seed."""
    values = {**base, "dataset": task, "label-privacy": privacy, "seed": seed}
    if epsilon is not None:
        values["label-epsilon"] = epsilon
    epochs = int(base.get("epochs", 1))
    attacked = sorted({1, epochs})
    cfg = attack_config(values, attacked)
    run = recorded_run(cfg, nodes, attacked, steps, evaluate=True)
    exp = Experiment.from_config(cfg)
    oracle = LabelOracle(cfg.data, nodes * cfg.clients_per_node, cfg.seed)
    classes = exp.info.num_classes
    rows = run_attacks(run, oracle, classes, cfg.seed, randomized_response(cfg, classes))
    best = best_attack(rows)
    costs = measure(exp)
    last = run.history[-1]
    traffic = [(r.mb_down_per_client or 0.0) + (r.mb_up_per_client or 0.0) for r in run.history]
    return FrontierRun(
        task,
        setting_name(privacy, epsilon),
        privacy,
        epsilon,
        seed,
        float(last.test[exp.task.headline]),
        f"{best.attack} (epoch {best.epoch})",
        float(best.recovery_rate or 0.0),
        float(best.chance_rate or 0.0),
        best.bound,
        costs.client_params,
        costs.client_gflops_fwd_bwd,
        statistics.fmean(traffic),
    )


def sweep(
    out: Path,
    tasks: Sequence[str],
    settings: Sequence[tuple[str, float | None]],
    seeds: Sequence[int],
    base: dict[str, Any],
    nodes: int,
    steps: int,
) -> list[FrontierRun]:
    """Every (task, setting, seed), skipping those ``runs.jsonl`` already holds."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    done = [FrontierRun(**json.loads(line)) for line in path.open()] if path.exists() else []
    have = {(r.task, r.setting, r.seed) for r in done}
    todo = [
        (t, p, e, s)
        for t in tasks
        for p, e in settings
        for s in seeds
        if (t, setting_name(p, e), s) not in have
    ]
    for t, p, e, s in progress(todo, "privacy frontier", enabled=True):
        run = one_run(t, p, e, s, base, nodes, steps)
        with path.open("a") as fh:
            fh.write(json.dumps(asdict(run)) + "\n")
        done.append(run)
    wanted = {(t, setting_name(p, e), s) for t in tasks for p, e in settings for s in seeds}
    return [r for r in done if (r.task, r.setting, r.seed) in wanted]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[FrontierRun]) -> list[dict[str, Any]]:
    """One row per (task, setting): means and standard deviations over the seeds."""
    rows = []
    keys = sorted({(r.task, r.setting) for r in runs}, key=lambda k: (k[0], _order(k[1])))
    for task, setting in keys:
        mine = [r for r in runs if r.task == task and r.setting == setting]
        acc, acc_std = _mean_std([r.test_accuracy for r in mine])
        rec, rec_std = _mean_std([r.best_recovery for r in mine])
        bounds = [r.bound for r in mine if r.bound is not None]
        attacks = sorted({r.best_attack.split(" (")[0] for r in mine})
        rows.append(
            {
                "task": task,
                "setting": setting,
                "seeds": len(mine),
                "test-accuracy": acc,
                "test-accuracy-std": acc_std,
                "best-attack-recovery": rec,
                "best-attack-recovery-std": rec_std,
                "best-attack": "/".join(attacks),
                "chance": statistics.fmean(r.chance for r in mine),
                "accuracy-chance": 1.0 / _num_classes(task),
                "bound": statistics.fmean(bounds) if bounds else None,
                "client-params": mine[0].client_params,
                "client-gflops-fwd-bwd": mine[0].client_gflops_fwd_bwd,
                "mb-per-client-epoch": statistics.fmean(r.mb_per_client_epoch for r in mine),
            }
        )
    return rows


def _num_classes(task: str) -> int:
    return dataset_info(resolve_config({"dataset": task}).data).num_classes


def _order(setting: str) -> int:
    names = [setting_name(p, e) for p, e in SETTINGS]
    return names.index(setting) if setting in names else len(names)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | label-privacy | test accuracy | best attack recovery | best attack | chance "
        "| label-DP bound | client params | client GFLOPs/sample | MB/client/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = "-" if r["bound"] is None else f"{r['bound']:.3f}"
        lines.append(
            f"| {r['task']} | {r['setting']} | {r['test-accuracy']:.3f} +- "
            f"{r['test-accuracy-std']:.3f} | {r['best-attack-recovery']:.3f} +- "
            f"{r['best-attack-recovery-std']:.3f} | {r['best-attack']} | {r['chance']:.3f} | "
            f"{bound} | {r['client-params']:,} | {r['client-gflops-fwd-bwd']:.4f} | "
            f"{r['mb-per-client-epoch']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against best-attack recovery: the privacy-utility frontier, one panel per
    task, one marker per setting (the same across panels), chance marked on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    settings = sorted({r["setting"] for r in rows}, key=_order)
    colours = plt.get_cmap("tab10")
    markers = "osD^vP*X"
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = {r["setting"]: r for r in rows if r["task"] == task}
        for i, setting in enumerate(settings):
            if setting not in mine:
                continue
            r = mine[setting]
            ax.errorbar(
                r["best-attack-recovery"],
                r["test-accuracy"],
                xerr=r["best-attack-recovery-std"],
                yerr=r["test-accuracy-std"],
                fmt=markers[i % len(markers)],
                color=colours(i),
                capsize=3,
                label=setting,
            )
        attack_chance = statistics.fmean(r["chance"] for r in mine.values())
        ax.axvline(attack_chance, color="grey", linestyle="--", label="attack chance (majority)")
        accuracy_chance = next(iter(mine.values()))["accuracy-chance"]
        ax.axhline(accuracy_chance, color="grey", linestyle=":", label="accuracy chance (1/C)")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("labels recovered by the best attack (fraction)")
        ax.set_ylabel("test accuracy")
        ax.set_title(task)
    legend: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
    fig.suptitle("MPSL label privacy: utility against the best label attack (mean +- std)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, rows: list[dict[str, Any]]) -> None:
    """``frontier.csv``, ``frontier.md`` and ``frontier.png`` under ``out``."""
    with (out / "frontier.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "frontier.md").write_text(markdown(rows) + "\n")
    plot(rows, out / "frontier.png")


def run(args: argparse.Namespace) -> int:
    """``mpsl-privacy-frontier`` with the arguments :func:`mpsl_flwr.cli.privacy_frontier`
    parsed."""
    with quiet(logging.ERROR):
        base = {**SMALL_RUN, "progress": False, **args.overrides}
        settings = [s for s in SETTINGS if args.settings is None or s[0] in args.settings]
        runs = sweep(args.out, args.tasks, settings, args.seeds, base, args.nodes, args.steps)
        rows = summarise(runs)
        write(args.out, rows)
        print(markdown(rows))
        print(f"Wrote {args.out}/frontier.csv, frontier.md, frontier.png and runs.jsonl")
        return 0

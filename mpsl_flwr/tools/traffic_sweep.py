"""``mpsl-traffic-sweep``: MB per client per epoch against encoder size (the paper's Fig. 3).

    mpsl-traffic-sweep                                # built-in V+T task, 10 clients
    mpsl-traffic-sweep --run-config "image-size=224" --samples-per-client 7800

Every figure comes from real Flower messages (the real ClientApp over
:class:`~mpsl_flwr.local_grid.LocalGrid`, metered like every run), over a few steps,
then scaled exactly:

* **MPSL** moves, per sample, cut-layer activations and gradients (with the step's
  small config and loss records), plus one head each way per client per epoch. A
  three-step epoch at the run's own global batch gives both: the head records are
  metered by name, and everything else divided by the samples trained is the per-sample
  cost; an epoch of ``--samples-per-client`` samples is then exact arithmetic. One
  encoder block suffices: the cut layer does not depend on depth.
* **FedAvg** (and LW/Prog-FedMML) moves the trainable arrays once per round: runs with
  one and with two trainable blocks give the bytes of the rest and of one block; the
  full encoder has ``depth`` of them (``finetune-blocks`` of them train).
* **FedCLIP** moves adapters and head only, whatever the depth: measured as is.

It writes ``traffic.csv`` and ``traffic.png`` and prints the table and the crossover:
the encoder sizes where FedAvg costs less than MPSL.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from clients.client_app import app as client_app
from mpsl_flwr.config import FULL_DEPTH, RunConfig, resolve_config
from mpsl_flwr.data.partition import client_batch_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.local_grid import LocalGrid
from mpsl_flwr.protocol import TrafficMeter
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.registry import STRATEGIES as REGISTRY
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.tools.logs import quiet

# Federated strategies that train the same parameters every round (no stages).
STRATEGIES = tuple(n for n, s in REGISTRY.items() if s.needs_grid and s.stages is None)
PROBE_STEPS = 3


def _one_epoch(cfg: RunConfig, nodes: int) -> tuple[EpochRecord, TrafficMeter]:
    """Run one epoch of ``cfg.strategy`` over real messages; its history row and meter."""
    from strategies import load_runner

    runner = load_runner(strategy_spec(cfg.strategy))(Experiment.from_config(cfg))
    rows: list[EpochRecord] = []
    runner.start(LocalGrid(client_app, nodes, cfg.to_mapping()), None, rows.append)
    return rows[0], runner.meter


def _mb(row: Mapping[str, Any]) -> tuple[float, float]:
    return row["mb-up-per-client"], row["mb-down-per-client"]


def probe_config(base: RunConfig, size: str, strategy: str, nodes: int, steps: int) -> RunConfig:
    """A short, IID, one-epoch run of ``strategy`` at the run's own per-client batch."""
    per_client = client_batch_size(base.batch_size, nodes)
    return base.replace(
        strategy=strategy,
        model_size=size,
        encoder_depth=1,
        finetune_blocks=-1,
        epochs=1,
        synthetic_train_size=per_client * nodes * steps,
        dirichlet_alpha=1e6,
        min_partition_size=0,
        checkpoint_every=0,
        progress=False,
    )


def measure_size(
    base: RunConfig, size: str, strategy: str, nodes: int, samples_per_client: float
) -> tuple[float, float]:
    """MB per client per epoch (up, down) of ``strategy`` at encoder ``size``."""
    spec = strategy_spec(strategy)
    if spec.side == "split":
        row, meter = _one_epoch(probe_config(base, size, strategy, nodes, PROBE_STEPS), nodes)
        out = []
        for mb, way in zip(_mb(row), ("up", "down"), strict=True):
            head_bytes, heads = meter.by_record[(way, "head")]
            per_sample = (mb * 1e6 * nodes - head_bytes) / row["samples-trained"]
            out.append((per_sample * samples_per_client + head_bytes / max(1, heads)) / 1e6)
        return out[0], out[1]
    one = _mb(_one_epoch(probe_config(base, size, strategy, nodes, 1), nodes)[0])
    if spec.model(base).trainable_blocks == 0:  # frozen encoder: depth does not matter
        return one
    two_cfg = probe_config(base, size, strategy, nodes, 1).replace(encoder_depth=2)
    two = _mb(_one_epoch(two_cfg, nodes)[0])
    blocks = base.replace(model_size=size).trainable_blocks
    up, down = (o + (t - o) * (blocks - 1) for o, t in zip(one, two, strict=True))
    return up, down


def crossover(rows: list[dict]) -> str:
    """Which sizes FedAvg is cheaper at, and where MPSL takes over."""
    by = {(r["size"], r["strategy"]): r["mb-total"] for r in rows}
    sizes = [s for s in dict.fromkeys(r["size"] for r in rows) if (s, "fedavg") in by]
    sizes = [s for s in sizes if (s, "mpsl") in by]
    if not sizes:
        return "No crossover: it needs both mpsl and fedavg in --strategies."
    cheaper = [s for s in sizes if by[(s, "fedavg")] < by[(s, "mpsl")]]
    if not cheaper:
        return "MPSL moves fewer bytes than FedAvg at every size measured."
    if len(cheaper) == len(sizes):
        return "FedAvg moves fewer bytes than MPSL at every size measured."
    first = next(s for s in sizes if s not in cheaper)
    return f"FedAvg moves fewer bytes only at {', '.join(cheaper)}; MPSL from {first} up."


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        ys = [
            next(r["mb-total"] for r in rows if r["size"] == s and r["strategy"] == strategy)
            for s in sizes
        ]
        ax.plot(sizes, ys, marker="o", label=strategy)
    ax.set_yscale("log")
    ax.set_xlabel("encoder size")
    ax.set_ylabel("MB per client per epoch (up + down)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_rows(
    base: RunConfig,
    sizes: list[str],
    strategies: list[str],
    nodes: int,
    samples_per_client: float = 0.0,
) -> tuple[list[dict], float]:
    """One row per (size, strategy): MB up, down and total per client per epoch, printed
    as measured; and the samples per client per epoch they are for (``samples_per_client``,
    or when 0 the train split / ``nodes``)."""
    samples = samples_per_client or len(Experiment.from_config(base).train_set()) / nodes
    rows = []
    for size in sizes:
        for strategy in strategies:
            up, down = measure_size(base, size, strategy, nodes, samples)
            row = {"size": size, "strategy": strategy, "mb-up": up, "mb-down": down}
            rows.append({**row, "mb-total": up + down})
            print(f"{size:>5} {strategy:>8}: {up:10.2f} MB up {down:10.2f} MB down", flush=True)
    return rows, samples


def run(args: argparse.Namespace) -> int:
    """``mpsl-traffic-sweep`` with the arguments :func:`mpsl_flwr.cli.traffic_sweep` parsed."""
    # The probe runs' own logs (and FedAvg's note on skipped evaluation) would bury the table.
    with quiet(logging.WARNING):
        base = resolve_config({**FULL_DEPTH, **args.overrides})
        rows, samples = sweep_rows(
            base, args.sizes, args.strategies, args.nodes, args.samples_per_client
        )
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "traffic.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        info = Experiment.from_config(base).info
        title = (
            f"{base.dataset}, {info.image_size}px, {samples:.0f} samples per client per epoch, "
            f"{args.nodes} clients"
        )
        plot(rows, args.out / "traffic.png", title)
        print(crossover(rows))
        print(f"Wrote {args.out / 'traffic.csv'} and {args.out / 'traffic.png'}")
        return 0

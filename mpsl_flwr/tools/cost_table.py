"""``mpsl-costs``: measured client and server compute of each strategy, per encoder size.

    mpsl-costs                                   # built-in V+T task, tiny..huge
    mpsl-costs --run-config "image-size=224" --sizes base   # the paper's Table 1 setting

For every (encoder size, strategy) it builds the model with random weights on the
``meta`` device (shapes only, so ViT-H at 224x224 takes seconds and no memory) and
reports what :func:`mpsl_flwr.costs.measure` counts: trainable parameters, GFLOPs per
sample forward and forward+backward, and training memory of one step at the client
batch ``ceil(B / nodes)`` (server: global batch ``B``), each on the client and the
server side; ``lw-fedmml`` and ``prog-fedmml`` get one row per stage. It writes
``costs.csv`` and ``costs.md`` and prints the Markdown table followed by FedAvg / MPSL
ratios of client GFLOPs, parameters and training memory.
"""

from __future__ import annotations

import argparse
import csv
from typing import Any

from mpsl_flwr.config import FULL_DEPTH, RunConfig, resolve_config
from mpsl_flwr.costs import measure
from mpsl_flwr.data.partition import client_batch_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.staging import StageSchedule

COLUMNS = (
    "size",
    "strategy",
    "client-params",
    "server-params",
    "client-gflops-fwd",
    "client-gflops-fwd-bwd",
    "server-gflops-fwd",
    "server-gflops-fwd-bwd",
    "client-train-mb",
    "server-train-mb",
)


def cost_rows(base: RunConfig, sizes: list[str], strategies: list[str], nodes: int) -> list[dict]:
    """One row per (size, strategy), measured."""
    rows = []
    client_batch = client_batch_size(base.batch_size, nodes)
    for size in sizes:
        for strategy in strategies:
            cfg = base.replace(model_size=size, strategy=strategy)
            exp = Experiment.from_config(cfg)
            spec = strategy_spec(strategy)
            batch = base.batch_size if spec.side == "server" else client_batch
            stages = [0]
            if spec.stages is not None:
                stages = list(range(StageSchedule.from_config(cfg).num_stages))
            for stage in stages:
                d = measure(exp, batch_size=batch, stage=stage).as_dict()
                if spec.side == "split":  # the server trains on the whole global batch
                    d["server_train_mb"] = measure(exp, base.batch_size).server_train_mb
                label = strategy if len(stages) == 1 else f"{strategy} s{stage + 1}/{len(stages)}"
                rows.append(
                    {
                        "size": size,
                        "strategy": label,
                        **{k.replace("_", "-"): v for k, v in d.items() if k != "strategy"},
                    }
                )
    return rows


def ratio_lines(rows: list[dict]) -> list[str]:
    """FedAvg / MPSL client GFLOPs (forward+backward) and client parameters, per size."""
    by = {(r["size"], r["strategy"]): r for r in rows}
    lines = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mpsl, fedavg = by.get((size, "mpsl")), by.get((size, "fedavg"))
        if mpsl and fedavg:
            lines.append(
                f"{size}: FedAvg / MPSL client GFLOPs (fwd+bwd) "
                f"{fedavg['client-gflops-fwd-bwd'] / mpsl['client-gflops-fwd-bwd']:.0f}x, "
                f"client parameters {fedavg['client-params'] / mpsl['client-params']:.1f}x, "
                f"client training memory "
                f"{fedavg['client-train-mb'] / mpsl['client-train-mb']:.1f}x"
            )
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |\n" for r in rows)


def run(args: argparse.Namespace) -> int:
    """``mpsl-costs`` with the arguments :func:`mpsl_flwr.cli.costs` parsed."""
    base = resolve_config({**FULL_DEPTH, **args.overrides})
    rows = cost_rows(base, args.sizes, args.strategies, args.nodes)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "costs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r[c] for c in COLUMNS} for r in rows)
    info = Experiment.from_config(base).info
    title = (
        f"Per-sample costs, {base.dataset} ({info.image_size}px images), global batch "
        f"{base.batch_size} over {args.nodes} clients; memory per training step\n\n"
    )
    text = title + markdown(rows) + "\n" + "\n".join(ratio_lines(rows)) + "\n"
    (args.out / "costs.md").write_text(text)
    print(text)
    print(f"Wrote {args.out / 'costs.csv'} and {args.out / 'costs.md'}")
    return 0

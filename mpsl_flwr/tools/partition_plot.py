"""``mpsl-partition-plot``: a PNG of how a dataset's training split is partitioned.

It plots the exact partitions the clients get (the same run-config keys, the same
partitioner and seed) with flwr-datasets' ``plot_label_distributions``: classes per
client for classification, images per pseudo-label for retrieval.

    mpsl-partition-plot dataset=synthetic-vqa dirichlet-alpha=0.1 --num-partitions 10 \\
        --out partitions.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mpsl_flwr.config import RunConfig, resolve_config
from mpsl_flwr.data.registry import dataset_info, partition_scheme, partitioner
from mpsl_flwr.tasks import task_of

log = logging.getLogger("mpsl_flwr")
LEGEND_MAX_CLASSES = 20


def plot_partitions(
    cfg: RunConfig,
    num_partitions: int,
    out: str | Path,
    plot_type: str = "bar",
    size_unit: str = "absolute",
) -> Path:
    """Write the partition plot of ``cfg``'s training split to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from flwr_datasets.visualization import plot_label_distributions

    info = dataset_info(cfg.data)
    pairs = task_of(info).labels_are_pair_ids
    scheme = partition_scheme(cfg.data, info)
    how = f"Dirichlet alpha={cfg.dirichlet_alpha:g}" if scheme == "dirichlet" else "IID"
    what = "images per pseudo-label" if pairs else "classes"
    many = info.num_classes > LEGEND_MAX_CLASSES
    fig, _, _ = plot_label_distributions(
        partitioner(cfg.data, num_partitions, seed=cfg.seed),
        label_name="label",
        plot_type=plot_type,
        size_unit=size_unit,
        legend=plot_type == "heatmap" or not many,
        verbose_labels=not pairs,
        title=f"{cfg.dataset}: {num_partitions} partitions, {how} ({what})",
        figsize=(max(6.0, 0.35 * num_partitions + 3), 5.0),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> None:
    """``mpsl-partition-plot`` with the arguments :func:`mpsl_flwr.cli.partition_plot` parsed."""
    cfg = resolve_config(args.overrides)
    path = plot_partitions(cfg, args.num_partitions, args.out, args.plot_type, args.size_unit)
    print(f"Wrote {path}")

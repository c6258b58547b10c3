"""Compare strategies on one task, partition and seed set, like the paper's Tables 1-2.

    mpsl-compare --strategies mpsl,fedavg,fedclip,centralized --seeds 0,1,2 --nodes 10 \\
        --run-config "dataset=synthetic-vqa epochs=4" --out outputs/compare

Every federated strategy runs as a real ``flwr run`` simulation on one private
SuperLink (see :mod:`mpsl_flwr.ops.launch`); centralized training runs in this process
through the same entry point and writes the same files. The command writes to ``--out``:

* ``table.md`` and ``table.csv``: per strategy, mean ± std over seeds of the final test
  metric, client trainable parameters, client GFLOPs per sample and training memory of
  one client step (measured, :mod:`mpsl_flwr.costs`; for the staged strategies GFLOPs
  averaged over the rounds and memory at its peak stage), MB per client per epoch and
  over the run (measured on the messages), and the rounds to reach 95% of the peak;
* ``curves.png``: test metric against epoch/round, mean over seeds with a ±std band;
* ``comparison.json``: all of it, plus where each run's own files are.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mpsl_flwr.config import RunConfig, resolve_config
from mpsl_flwr.costs import run_costs
from mpsl_flwr.data.partition import client_batch_size
from mpsl_flwr.experiment import Experiment
from mpsl_flwr.ops.launch import flwr_run, local_superlink
from mpsl_flwr.preflight import preflight
from mpsl_flwr.project import PROJECT_DIR
from mpsl_flwr.registry import strategy_spec
from mpsl_flwr.results import draw_chance, epoch_axis


def rounds_to_fraction_of_peak(curve: list[float], fraction: float = 0.95) -> int:
    """First epoch/round (1-based) at which ``curve`` reaches ``fraction`` of its peak."""
    peak = max(curve)
    return next(i + 1 for i, v in enumerate(curve) if v >= fraction * peak)


def run_all(
    strategies: list[str],
    seeds: list[int],
    nodes: int,
    overrides: dict[str, Any],
    out: Path,
    timeout: float,
) -> list[dict[str, Any]]:
    """Run every (strategy, seed); return one record per run (failed ones included)."""
    runs_dir = out / "runs"
    records = []
    with local_superlink(out / "flwr-home") as link:
        for seed in seeds:
            for strategy in strategies:
                values = {
                    **overrides,
                    "strategy": strategy,
                    "seed": seed,
                    "output-dir": str(runs_dir),
                    "run-name": f"{strategy}-s{seed}",
                }
                print(f"\n=== {strategy}, seed {seed} ===", flush=True)
                t0 = time.time()
                try:
                    if not strategy_spec(strategy).needs_grid:  # runs in this process
                        from strategies.runner import run_experiment

                        run_dir = run_experiment(RunConfig.from_mapping(values), grid=None)
                        status = "finished:completed"
                    else:
                        outcome = flwr_run(link, values, nodes, timeout=timeout, stream=False)
                        run_dir, status = outcome.run_dir, outcome.status
                except Exception as err:
                    run_dir, status = runs_dir / values["run-name"], f"error: {err}"
                records.append(
                    {
                        "strategy": strategy,
                        "seed": seed,
                        "status": status,
                        "run-dir": str(run_dir),
                        "wall-time-s": round(time.time() - t0, 1),
                    }
                )
                print(f"    {status} in {records[-1]['wall-time-s']}s: {run_dir}", flush=True)
    return records


def summarise(
    records: list[dict[str, Any]], overrides: dict[str, Any], nodes: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Table rows (one per strategy) and the per-seed curves behind the plot.

    A strategy's curves are ``{"metric": name, "curves": [one list per seed]}``.
    """
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in records):
        done = [
            r for r in records if r["strategy"] == strategy and r["status"].endswith("completed")
        ]
        if not done:
            rows.append({"strategy": strategy, "runs": 0})
            continue
        summaries = [json.loads((Path(r["run-dir"]) / "summary.json").read_text()) for r in done]
        cfg = resolve_config({**overrides, "strategy": strategy})
        exp = Experiment.from_config(cfg)
        metric = exp.task.headline
        per_seed = [[h[metric] for h in s["history"]] for s in summaries]
        chance = exp.task.chance(exp.info.num_classes)
        curves[strategy] = {"metric": metric, "curves": per_seed, "chance": chance}
        finals = [c[-1] for c in per_seed]
        mb = [
            np.mean([h["mb-up-per-client"] + h["mb-down-per-client"] for h in s["history"]])
            for s in summaries
        ]
        cost = run_costs(exp, client_batch_size(cfg.batch_size, nodes))
        rows.append(
            {
                "strategy": strategy,
                "runs": len(done),
                "metric": metric,
                "final-mean": float(np.mean(finals)),
                "final-std": float(np.std(finals)),
                # Measured like the GFLOPs (for the staged strategies: the largest stage).
                "client-trainable-params": cost.client_params,
                "client-gflops-per-sample": cost.client_gflops_fwd_bwd,
                "client-train-mb": cost.client_train_mb,
                "mb-per-client-per-epoch": float(np.mean(mb)),
                "mb-per-client-total": float(np.mean(mb)) * len(per_seed[0]),
                "rounds-to-95pct-peak": float(
                    np.mean([rounds_to_fraction_of_peak(c) for c in per_seed])
                ),
                "wall-time-s": float(np.mean([r["wall-time-s"] for r in done])),
            }
        )
    return rows, curves


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    """``table.md`` and ``table.csv``; returns the Markdown."""
    header = (
        "| strategy | runs | final test metric (mean ± std) | client trainable params | "
        "client GFLOPs / sample | client train step MB | MB / client / epoch | "
        "MB / client, run | rounds to 95% of peak |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["runs"]:
            lines.append(f"| {r['strategy']} | 0 | failed | | | | | | |")
            continue
        lines.append(
            f"| {r['strategy']} | {r['runs']} | {r['final-mean']:.4f} ± {r['final-std']:.4f} "
            f"({r['metric']}) | {r['client-trainable-params'] / 1e6:.3f} M | "
            f"{r['client-gflops-per-sample']:.4f} | {r['client-train-mb']:.1f} | "
            f"{r['mb-per-client-per-epoch']:.2f} | {r['mb-per-client-total']:.1f} | "
            f"{r['rounds-to-95pct-peak']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99
    )
    with (out / "table.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return text


def plot_curves(curves: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Test metric against epoch/round for every strategy: the mean over seeds, a band of
    ± one standard deviation over seeds, and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    metric, chance = "", None
    for strategy, data in curves.items():
        metric, chance = data["metric"], data.get("chance")
        length = min(len(c) for c in data["curves"])
        values = np.array([c[:length] for c in data["curves"]])
        x = np.arange(1, length + 1)
        mean, std = values.mean(0), values.std(0)
        seeds = len(values)
        band = f"mean ± std, {seeds} seeds" if seeds > 1 else "1 seed"
        ax.plot(x, mean, marker="o", label=f"{strategy} ({band})")
        if seeds > 1:
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    draw_chance(ax, chance)
    epoch_axis(ax, "epoch / round")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """``mpsl-compare`` with the arguments :func:`mpsl_flwr.cli.compare` parsed."""
    strategies, seeds, overrides = args.strategies, args.seeds, args.overrides
    base = resolve_config(overrides, PROJECT_DIR)
    preflight(base, args.nodes * base.clients_per_node)  # fail fast, before any run
    out = (
        args.out
        or PROJECT_DIR / "outputs" / f"compare-{base.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    records = run_all(strategies, seeds, args.nodes, overrides, out, args.timeout)
    rows, curves = summarise(records, overrides, args.nodes)
    table = write_table(rows, out)
    seed_list = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ",".join(map(str, seeds))
    title = f"{base.dataset}, {args.nodes} clients, alpha={base.dirichlet_alpha}, {seed_list}"
    if curves:
        plot_curves(curves, out / "curves.png", title)
    (out / "comparison.json").write_text(
        json.dumps(
            {
                "strategies": strategies,
                "seeds": seeds,
                "nodes": args.nodes,
                "run-config": overrides,
                "wall-time-s": round(time.time() - t0, 1),
                "rows": rows,
                "runs": records,
            },
            indent=2,
        )
    )
    print("\n" + table)
    print(f"Wall time {time.time() - t0:.0f}s. Written: {out}/table.md, table.csv, curves.png")
    return 0 if all(r["status"].endswith("completed") for r in records) else 1

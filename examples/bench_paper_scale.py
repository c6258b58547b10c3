"""One MPSL step at the paper's scale under a real ``flwr run`` simulation: where its time goes.

The paper's setting: N = 100 logical clients, ViT-B width (768), 224 px images, global
batch B = 500, V+T early fusion (``synthetic-vqa``: 197 image tokens + the text
tokens). Each ``--nodes`` value runs them on that many simulated SuperNodes
(``clients-per-node = clients / nodes``; default 10 and 100). On a CPU the encoder is
one block deep (``encoder-depth=1``); ``--full`` runs the paper's 12 blocks, the last 6
training (``finetune-blocks=6``), which wants a GPU server.

Per step, from the run's ``steps.jsonl`` (:mod:`strategies.mpsl.timing`): the server's
compute (forward, backward, optimizer step), the clients' compute as each node reports
it for its handler (sum over nodes, and per leg the slowest node, added over the legs),
transport (the step's wall time minus the server's and the slowest nodes' compute: the
Flower message path, serialisation, polls; "workers": net of client compute that the
simulation's Ray workers, one per CPU, ran in turns), the payload bytes of each leg each way, and
the *floor*: the time of one plain in-memory copy of that many bytes (``torch.clone`` of
a uint8 tensor of the same size, best of 5) in this process, during this invocation.
The same invocation trains centralized (one process, the whole model, the same global
batch and data) and reports the throughput ratio MPSL / centralized (samples per second
of training steps, over the epoch as centralized's is; and MPSL over its steps after the
first, which also carries the initial forward leg and the head push).

    python examples/bench_paper_scale.py                      # 10 and 100 nodes, 2 steps
    python examples/bench_paper_scale.py --nodes 10 --steps 2 --json paper.json
    python examples/bench_paper_scale.py --full --server-device cuda   # depth 12, 6 train
    python examples/bench_paper_scale.py --deploy --nodes 2   # mpsl-deploy --fast (below)

``--steps`` sets the training split to ``steps * B`` samples (one epoch); partitions are
IID (``dirichlet-alpha=1000``), so every client takes part in the first steps and an
epoch may run a few small steps more while the largest partitions finish. ``--deploy``
runs the same on a real local SuperLink with ``--nodes`` SuperNodes started as
``mpsl-deploy --fast`` does (warm ClientApp executors, patched polls), one SuperNode
process per node (each with its own copy of the data): checked at a tiny shape on 2
nodes; not run at the paper's shape on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mpsl_flwr.config import RunConfig, parse_overrides
from mpsl_flwr.ops.deploy import FAST, DeployOptions, deployment
from mpsl_flwr.ops.launch import flwr_run, local_superlink
from mpsl_flwr.ops.superlink import FlwrCli
from mpsl_flwr.results import STEPS_JSONL
from strategies.runner import run_experiment


def paper_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The run config both MPSL and centralized train with."""
    depth = {"encoder-depth": 12, "finetune-blocks": 6} if args.full else {"encoder-depth": 1}
    return {
        "dataset": "synthetic-vqa",
        "model-size": "base",
        "image-size": args.image_size,
        "batch-size": args.batch_size,
        "epochs": 1,
        "synthetic-train-size": args.steps * args.batch_size,
        "synthetic-test-size": 20,
        "eval-batch-size": 20,
        "dirichlet-alpha": 1000.0,
        "min-partition-size": 1,
        "server-device": args.server_device,
        "step-timeout": args.timeout,
        "checkpoint-every": 0,
        "progress": False,
        "output-dir": str(out),
        **depth,
        **parse_overrides([args.run_config] if args.run_config else None),
    }


def copy_seconds(nbytes: int, repeats: int = 5) -> float:
    """The floor of moving ``nbytes``: one in-memory copy of them (best of ``repeats``)."""
    if nbytes <= 0:
        return 0.0
    data = torch.ones(nbytes, dtype=torch.uint8)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.clone()
        best = min(best, time.perf_counter() - started)
    return best


def with_floor(row: dict[str, Any], workers: int) -> dict[str, Any]:
    """A ``steps.jsonl`` row with the copy floor of each leg's bytes (and the step's), and
    transport net of client compute run by ``workers`` ClientApp workers side by side.

    ``transport-s`` (the strategy's) takes the slowest node of a leg as its compute; a
    simulation with fewer Ray workers than nodes runs them in turns, so a leg computes
    for at least ``sum / workers`` too: ``transport-workers-s`` uses the larger.
    """
    legs = [
        {**leg, "floor-s": copy_seconds(leg["bytes-down"]) + copy_seconds(leg["bytes-up"])}
        for leg in row["legs"]
    ]
    clients = sum(
        max(leg["client-compute-max-s"], leg["client-compute-sum-s"] / workers) for leg in legs
    )
    return {
        **row,
        "legs": legs,
        "floor-s": sum(leg["floor-s"] for leg in legs),
        "client-compute-workers-s": clients,
        "transport-workers-s": row["wall-s"] - row["server-compute-s"] - clients,
    }


def throughput(rows: list[dict[str, Any]]) -> float:
    """Samples per second over ``rows`` (steps)."""
    return sum(r["samples"] for r in rows) / sum(r["wall-s"] for r in rows)


def centralized(common: dict[str, Any]) -> dict[str, Any]:
    """Train the same epoch centrally, in this process; its step time and throughput."""
    cfg = RunConfig.from_mapping({**common, "strategy": "centralized", "run-name": "central"})
    summary = json.loads((run_experiment(cfg, grid=None) / "summary.json").read_text())
    row = summary["history"][0]
    return {
        "steps": row["steps"],
        "step-s": row["epoch-time-s"] / row["steps"],
        "samples-per-s": row["samples-trained"] / row["epoch-time-s"],
    }


@contextlib.contextmanager
def links(args: argparse.Namespace, nodes: int, out: Path) -> Iterator[FlwrCli]:
    """A simulation SuperLink, or with ``--deploy`` a local deployment of ``nodes``."""
    if args.deploy:
        options = DeployOptions(nodes=nodes, workdir=out / f"deploy-{nodes}", **FAST)
        with deployment(options) as dep:
            yield dep
    else:
        with local_superlink(
            out / f"flwr-home-{nodes}", simulation_poll=args.simulation_poll
        ) as link:
            yield link


def mpsl(args: argparse.Namespace, common: dict[str, Any], nodes: int, out: Path) -> dict:
    """One MPSL run of ``args.clients`` clients on ``nodes`` nodes; its timed steps."""
    config = {
        **common,
        "strategy": "mpsl",
        "clients-per-node": args.clients // nodes,
        "run-name": f"mpsl-{nodes}-nodes",
    }
    with links(args, nodes, out) as link:
        outcome = flwr_run(
            link, config, None if args.deploy else nodes, timeout=args.timeout, stream=False
        )
    if not outcome.ok:
        raise SystemExit(f"MPSL on {nodes} nodes: {outcome.status}; see {outcome.run_dir}")
    lines = (outcome.run_dir / STEPS_JSONL).read_text().splitlines()
    workers = nodes if args.deploy else max(1, os.cpu_count() or 1)  # 1 CPU per client
    rows = [with_floor(json.loads(line), min(workers, nodes)) for line in lines]
    return {
        "nodes": nodes,
        "clients-per-node": args.clients // nodes,
        "run-dir": str(outcome.run_dir),
        "steps": rows,
        "samples-per-s": throughput(rows),  # like centralized: the whole epoch's steps
        "steady-samples-per-s": throughput(rows[1:] or rows),
    }


SPEEDS = ("samples-per-s", "steady-samples-per-s")

TABLE = (
    "| nodes | step | samples | wall s | server s | clients sum s | clients max s | "
    "transport s | transport (workers) s | MB down | MB up | copy floor s | "
    "transport / floor |"
)


def table_row(nodes: int, r: dict[str, Any]) -> str:
    ratio = r["transport-workers-s"] / r["floor-s"] if r["floor-s"] > 0 else float("nan")
    return (
        f"| {nodes} | {r['step']} | {r['samples']} | {r['wall-s']:.2f} | "
        f"{r['server-compute-s']:.2f} | {r['client-compute-sum-s']:.2f} | "
        f"{r['client-compute-max-s']:.2f} | {r['transport-s']:.2f} | "
        f"{r['transport-workers-s']:.2f} | "
        f"{r['bytes-down'] / 1e6:.1f} | {r['bytes-up'] / 1e6:.1f} | {r['floor-s']:.3f} | "
        f"{ratio:.0f}x |"
    )


def report(results: dict[str, Any]) -> None:
    print("\n" + TABLE)
    print("|" + "---|" * (TABLE.count("|") - 1))
    for run in results["mpsl"]:
        for r in run["steps"]:
            print(table_row(run["nodes"], r))
    central = results["centralized"]
    print(
        f"\nCentralized: {central['step-s']:.2f} s/step, {central['samples-per-s']:.1f} samples/s"
    )
    for run in results["mpsl"]:
        ratio, steady = (run[k] / central["samples-per-s"] for k in SPEEDS)
        print(
            f"MPSL on {run['nodes']} nodes: {run['samples-per-s']:.1f} samples/s over all "
            f"steps (MPSL / centralized = {ratio:.2f}), {run['steady-samples-per-s']:.1f} "
            f"after the first ({steady:.2f})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--clients", type=int, default=100, help="logical clients N")
    parser.add_argument("--batch-size", type=int, default=500, help="global batch B")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=2, help="training split = steps * B")
    parser.add_argument("--full", action="store_true", help="depth 12, last 6 blocks train")
    parser.add_argument("--server-device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--simulation-poll", type=float, default=None, help="patched simulation poll (s)"
    )
    parser.add_argument("--deploy", action="store_true", help="mpsl-deploy --fast instead")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run and step, s")
    parser.add_argument("--run-config", default="", help="extra 'key=value ...' for both")
    parser.add_argument("--json", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    if any(args.clients % n for n in args.nodes):
        parser.error(f"every --nodes value must divide --clients {args.clients}")
    out = Path(tempfile.mkdtemp(prefix="bench-paper-scale-"))
    path = args.json or out / "results.json"
    common = paper_config(args, out)
    results: dict[str, Any] = {"config": common, "args": vars(args) | {"json": str(path)}}
    results["centralized"] = centralized(common)
    results["mpsl"] = []
    path.write_text(json.dumps(results, indent=2))
    for nodes in args.nodes:
        results["mpsl"].append(mpsl(args, common, nodes, out))
        path.write_text(json.dumps(results, indent=2))  # each run is kept as it ends
        print(f"{nodes} nodes done: {path}", flush=True)
    report(results)
    print(f"\nResults: {path}\nRuns: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

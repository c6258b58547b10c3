"""Throughput of MPSL under a real ``flwr run`` simulation against the centralized loop.

Both train the same model on the same data with the same global batch, on this machine,
in one invocation; the figure is samples per second of training (evaluation excluded),
averaged over the epochs after the first (which pays for Ray start-up and for every
client process generating its data), and their ratio MPSL / centralized.

    python examples/bench_throughput.py --nodes 10 --batch-size 64 256 --alpha 1000 0.1

A large ``--alpha`` makes the partitions IID, so every client takes part in every step
(b_n = ceil(B / N)); with alpha = 0.1 an epoch lasts until the largest partition is
exhausted and later steps carry few clients. ``--clients-per-node 5`` runs the same
10 logical clients (own partitions, heads and optimisers) on 2 simulated SuperNodes,
so a step costs 2 ClientApp calls per leg instead of 10.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mpsl_flwr.config import RunConfig
from mpsl_flwr.ops.launch import flwr_run, local_superlink
from strategies.runner import run_experiment


def samples_per_second(summary: dict) -> float:
    rows = summary["history"][1:] or summary["history"]
    return sum(r["samples-trained"] for r in rows) / sum(r["epoch-time-s"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--alpha", type=float, nargs="+", default=[1000.0])
    parser.add_argument(
        "--clients-per-node",
        type=int,
        default=1,
        help="logical clients per simulated SuperNode (--nodes stays the client count)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--run-config", default="", help="extra 'key=value ...' for both")
    args = parser.parse_args()
    from mpsl_flwr.config import parse_overrides

    extra = parse_overrides([args.run_config]) if args.run_config else {}
    out = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    results = []
    with local_superlink(out / "flwr-home") as link:
        for batch in args.batch_size:
            common = {
                "dataset": "synthetic-vqa",
                "model-size": "tiny",
                "batch-size": batch,
                "epochs": args.epochs,
                "synthetic-train-size": args.train_size,
                "synthetic-test-size": 200,
                "progress": False,
                "checkpoint-every": 0,
                "output-dir": str(out),
                **extra,
            }
            central_dir = run_experiment(
                RunConfig.from_mapping(
                    {**common, "strategy": "centralized", "run-name": f"central-b{batch}"}
                ),
                grid=None,
            )
            central = samples_per_second(json.loads((central_dir / "summary.json").read_text()))
            for alpha in args.alpha:
                outcome = flwr_run(
                    link,
                    {
                        **common,
                        "strategy": "mpsl",
                        "dirichlet-alpha": alpha,
                        "clients-per-node": args.clients_per_node,
                        "run-name": f"mpsl-b{batch}-a{alpha}",
                    },
                    args.nodes // args.clients_per_node,
                    stream=False,
                )
                if not outcome.ok:
                    raise SystemExit(f"MPSL run failed: {outcome.status}")
                summary = outcome.summary()
                mpsl = samples_per_second(summary)
                steps = summary["history"][-1]["steps"]
                results.append((batch, alpha, mpsl, central, mpsl / central, steps))
                print(
                    f"B={batch} alpha={alpha}: MPSL {mpsl:.1f} samples/s, centralized "
                    f"{central:.1f} samples/s, ratio {mpsl / central:.2f} ({steps} steps/epoch)",
                    flush=True,
                )
    print("\n| global batch | alpha | MPSL samples/s | centralized samples/s | ratio |")
    print("|---|---|---|---|---|")
    for batch, alpha, mpsl, central, ratio, _ in results:
        print(f"| {batch} | {alpha:g} | {mpsl:.1f} | {central:.1f} | {ratio:.2f} |")
    print(f"\nRuns: {out}")


if __name__ == "__main__":
    main()

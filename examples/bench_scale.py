"""Server memory against the number of MPSL clients, and how many one machine can run.

Runs one epoch of a real MPSL ``flwr run`` simulation for each ``--clients`` value, at the
same global batch, and reads the ServerApp process's peak resident memory from the run's
``summary.json`` (``server-peak-rss-mb``). The server keeps one model whatever the
number of clients, so the ratios against the first value should stay near 1.

    python examples/bench_scale.py --clients 10 100 500
    python examples/bench_scale.py --clients 1000 2000 --clients-per-node 10

``--clients-per-node`` lets one SuperNode serve several logical clients (run-config
``clients-per-node``), the way to go past the number of virtual nodes Ray keeps busy.

In a simulation the ServerApp shares its process with Flower's simulation engine, which
also holds every virtual node's ``context.state`` (here each client's head and AdamW
state), so that process grows with N for reasons that are the clients', not the
server's. ``--deploy`` measures the server alone: a real SuperLink and two SuperNodes
(``mpsl-deploy --fast``) serving ``clients / 2`` logical clients each, where the
ServerApp runs in a process of its own:

    python examples/bench_scale.py --deploy --clients 10 100 500
The global batch (default 500) is at least the largest N, so every N trains on the same
batch; with B < N each client would still draw one sample and the server batch would
grow with N. Partitions are IID (alpha 1000): with 500 clients and Dirichlet 0.1 many
would be empty (flwr-datasets gives up after 10 draws). Evaluation runs on a 200-sample
test split so the figure is the epoch's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mpsl_flwr.ops.deploy import DeployOptions, deployment
from mpsl_flwr.ops.launch import flwr_run, local_superlink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--clients-per-node", type=int, default=1)
    # B >= the largest N, so every N trains on the same global batch (ceil(B/N) each).
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    parser.add_argument("--deploy", action="store_true", help="real SuperLink + 2 SuperNodes")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = []
    if args.deploy:
        options = DeployOptions(
            nodes=2,
            workdir=out / "deploy",
            warm_clientapp=True,
            node_poll=0.2,
            object_pull_backoff=0.02,
        )
        link_cm = deployment(options)
    else:
        link_cm = local_superlink(out / "flwr-home")
    with link_cm as link:
        for clients in args.clients:
            per_node = clients // 2 if args.deploy else args.clients_per_node
            nodes = max(1, clients // per_node)
            t0 = time.time()
            outcome = flwr_run(
                link,
                {
                    "step-timeout": 600.0,
                    "strategy": "mpsl",
                    "batch-size": args.batch_size,
                    "epochs": 1,
                    "dirichlet-alpha": 1000.0,
                    "synthetic-train-size": args.train_size,
                    "synthetic-test-size": 200,
                    "clients-per-node": per_node,
                    "checkpoint-every": 0,
                    "progress": False,
                    "output-dir": str(out),
                    "run-name": f"scale-{clients}",
                },
                None if args.deploy else nodes,
                timeout=args.timeout,
                stream=False,
            )
            wall = time.time() - t0
            if not outcome.ok:
                print(f"{clients} clients: {outcome.status} after {wall:.0f} s", flush=True)
                results.append((clients, None, wall, 0))
                continue
            summary = outcome.summary()
            rss = summary["server-peak-rss-mb"]
            row = summary["history"][0]
            results.append((clients, rss, wall, row["steps"]))
            print(
                f"{clients} clients ({nodes} nodes): server peak RSS {rss:.0f} MB, one epoch "
                f"of {row['steps']} steps in {row['epoch-time-s']:.0f} s (run {wall:.0f} s)",
                flush=True,
            )
    base = next((r[1] for r in results if r[1]), None)
    print("\n| clients | server peak RSS (MB) | ratio to first | steps | run wall time (s) |")
    print("|---|---|---|---|---|")
    for clients, rss, wall, steps in results:
        ratio = f"{rss / base:.2f}" if rss and base else "failed"
        print(f"| {clients} | {rss or '-'} | {ratio} | {steps} | {wall:.0f} |")
    print(f"\nRuns: {out}")


if __name__ == "__main__":
    main()

"""Wall time of one MPSL step in simulation and in a real deployment on loopback.

For each mode it starts one SuperLink (a simulation SuperLink, or a deployment with
N SuperNodes), submits the same tiny run twice with two training-set sizes, and takes

    seconds per step = (epoch time of the large run - of the small run)
                       / (steps of the large run - steps of the small run)

so that start-up, discovery, the first forward leg and the end-of-epoch head exchange
cancel out. On a shared machine that difference is at the mercy of one noisy run, so
it also prints the pooled estimate

    seconds per step ~ (sum of epoch times) / (sum of (steps + 1))

(an epoch is ``steps`` steps plus the first forward leg and the head exchange, about
one step's worth of legs), which uses every step of both runs. A steady-state step is
two round trips (``train.loss``, then ``train.backward`` carrying the next
activations). It also prints the median message-path overhead of a leg (its wall
time minus its slowest node's compute, from the runs' ``steps.jsonl``, steps after the
first): the figure the simulation poll moves, and one that compute noise on a shared
machine does not swamp. Modes (repeat them to alternate, e.g. ``sim sim-poll sim
sim-poll``):

    sim          flwr simulation (Ray), as mpsl-run
    sim-poll     the same with the simulation's 0.1 s poll of the nodes' inboxes
                 lowered to --simulation-poll (opt-in patch of Flower 1.41/1.42,
                 ``flower_patches.shorten_simulation_poll``)
    deploy       flower-superlink + flower-supernode with Flower's defaults
                 (--isolation subprocess: a fresh flwr-clientapp process per message;
                 SuperExec task poll 1 s; SuperNode idle poll 3 s)
    deploy-poll  the same with the SuperExec task poll at 0.1 s (the mpsl-deploy
                 default; a public Flower environment variable)
    deploy-fast  mpsl-deploy --fast: a warm ClientApp executor per node (--isolation
                 process), the SuperNode idle poll capped at 0.2 s and the object-pull
                 back-off at 0.02 s (opt-in patches of Flower 1.41)

Simulation steps cost a fraction of a second and the machine may be shared, so its
long run is longer (``LARGE``) to keep the difference well above the noise.

    python examples/bench_step_latency.py                  # sim, deploy, deploy-fast
    python examples/bench_step_latency.py --modes sim deploy-fast
    python examples/bench_step_latency.py --modes sim sim-poll sim sim-poll --nodes 10 \
        --small 160 --large 640
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpsl_flwr.ops.deploy import FAST, DeployOptions, deployment
from mpsl_flwr.ops.launch import flwr_run, local_superlink
from mpsl_flwr.ops.runs import RunOutcome
from mpsl_flwr.results import STEPS_JSONL

MODES = ("sim", "sim-poll", "deploy", "deploy-poll", "deploy-fast")
DEFAULT_MODES = ("sim", "deploy", "deploy-fast")
LARGE = {"sim": 640, "sim-poll": 640, "deploy": 160, "deploy-poll": 160, "deploy-fast": 256}
"""Train size of the long run per mode (the short run has ``--small``)."""


def tiny_run(train_size: int, out: Path, name: str) -> dict[str, Any]:
    """The same tiny classification run for every mode; near-IID so steps are even."""
    return {
        "epochs": 1,
        "synthetic-train-size": train_size,
        "synthetic-test-size": 16,
        "encoder-depth": 2,
        "batch-size": 32,
        "dirichlet-alpha": 1000.0,
        "progress": False,
        "output-dir": str(out),
        "run-name": name,
    }


def epoch_row(outcome: RunOutcome) -> dict[str, Any]:
    """The run's epoch row, with the message-path overhead of each of its legs after the
    first step (``leg-overheads``: leg wall time minus its slowest node's compute, from
    ``steps.jsonl``), a figure that the steps' compute noise does not swamp."""
    if not outcome.ok:
        raise RuntimeError(f"run {outcome.run_id} ended {outcome.status}")
    row = json.loads((outcome.run_dir / "summary.json").read_text())["history"][0]
    steps = [json.loads(line) for line in (outcome.run_dir / STEPS_JSONL).open()]
    overheads = [
        leg["wall-s"] - leg["client-compute-max-s"] for step in steps[1:] for leg in step["legs"]
    ]
    return {**row, "leg-overheads": overheads}


def measure(
    mode: str, nodes: int, sizes: tuple[int, int], out: Path, simulation_poll: float = 0.005
) -> dict[str, Any]:
    """Epoch times and steps of the two runs of one mode; seconds per step."""
    rows = []
    stamp = time.strftime("%H%M%S")
    if mode.startswith("sim"):
        poll = simulation_poll if mode == "sim-poll" else None
        with local_superlink(simulation_poll=poll) as link:
            for size in sizes:
                cfg = tiny_run(size, out, f"{mode}-{size}-{stamp}")
                rows.append(epoch_row(flwr_run(link, cfg, nodes, stream=False)))
    else:
        options = DeployOptions(
            nodes=nodes,
            superexec_poll_interval=None if mode == "deploy" else 0.1,
            **(FAST if mode == "deploy-fast" else {}),
        )
        with deployment(options) as dep:
            for size in sizes:
                cfg = tiny_run(size, out, f"{mode}-{size}-{stamp}")
                rows.append(epoch_row(dep.run(cfg, stream=False)))
    (small, large) = rows
    dsteps = large["steps"] - small["steps"]
    if dsteps <= 0:
        raise RuntimeError(f"{mode}: both sizes gave {small['steps']}/{large['steps']} steps")
    return {
        "mode": mode,
        "leg_overhead_median_s": statistics.median(small["leg-overheads"] + large["leg-overheads"]),
        "steps": (small["steps"], large["steps"]),
        "epoch_s": (small["epoch-time-s"], large["epoch-time-s"]),
        "s_per_step": (large["epoch-time-s"] - small["epoch-time-s"]) / dsteps,
        "s_per_step_pooled": (small["epoch-time-s"] + large["epoch-time-s"])
        / (small["steps"] + large["steps"] + 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--small", type=int, default=64, help="train size of the short run")
    parser.add_argument(
        "--large", type=int, default=None, help="train size of the long run (default: LARGE)"
    )
    parser.add_argument(
        "--simulation-poll", type=float, default=0.005, help="sim-poll: seconds between passes"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="mpsl-bench-") as tmp:
        for mode in args.modes:
            t0 = time.time()
            print(f"[{mode}] running...", flush=True)
            sizes = (args.small, args.large or LARGE[mode])
            res = measure(mode, args.nodes, sizes, Path(tmp), args.simulation_poll)
            res["bench_wall_s"] = round(time.time() - t0, 1)
            results.append(res)
            print(
                f"[{mode}] {res['s_per_step']:.2f} s/step (difference), "
                f"{res['s_per_step_pooled']:.2f} s/step (pooled), median leg overhead "
                f"{res['leg_overhead_median_s']:.3f} s",
                flush=True,
            )
    base = next((r for r in results if r["mode"] == "sim"), None)
    print(f"\n{args.nodes} nodes, tiny ViT (depth 2), batch 32, classification")
    print(
        "| mode | steps | epoch s | s/step (difference) | s/step (pooled) | x sim (pooled) "
        "| median leg overhead s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r["s_per_step_pooled"] / base["s_per_step_pooled"] if base else None
        steps = "/".join(str(s) for s in r["steps"])
        epoch = "/".join(f"{s:.1f}" for s in r["epoch_s"])
        print(
            f"| {r['mode']} | {steps} | {epoch} | {r['s_per_step']:.2f} | "
            f"{r['s_per_step_pooled']:.2f} | {f'{ratio:.2f}x' if ratio else '-'} | "
            f"{r['leg_overhead_median_s']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What simulation isolation costs: a 3-node ``flwr run`` with and without the replacement
of dead Ray actors (``flower_patches.replace_dead_actors``), healthy or with node 1's
ClientApp killing its process (``tests/hostile_clientapp.py``).

For each case it prints the run's status and wall time, each epoch's samples trained,
dropped client-steps and time, the error replies the server logged (node, leg, step),
and the peak resident memory of the Ray worker processes and of every process under
the SuperLink, sampled twice a second from ``/proc``.

    python examples/bench_isolation.py                    # the four cases, 2 epochs
    python examples/bench_isolation.py --cases patched-hostile --leg train.forward --times 1000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
from pathlib import Path

from mpsl_flwr.ops.launch import flwr_run, local_superlink
from mpsl_flwr.ops.processes import children_of
from mpsl_flwr.ops.superlink import SuperLink
from mpsl_flwr.project import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "tests"))
import hostile_clientapp

CASES = ("stock-healthy", "patched-healthy", "stock-hostile", "patched-hostile")


def _rss_mb(pid: int) -> tuple[float, str]:
    """Resident memory (MB) and command line of ``pid``; (0, "") if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return 0.0, ""
    rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return int(rss) / 1024, args


def sample_memory(link: SuperLink, stop: threading.Event, peak: dict[str, float]) -> None:
    """Peak RSS (MB) of the ``ray::`` workers and of every process under the SuperLink
    (SuperExec, the simulation with its ServerApp, Ray's own processes, the workers)."""
    while not stop.wait(0.5):
        if link.process is None:
            continue
        procs = [_rss_mb(pid) for pid in children_of(link.process.pid)]
        workers = sum(rss for rss, args in procs if args.startswith("ray::"))
        peak["ray-workers-mb"] = round(max(peak.get("ray-workers-mb", 0), workers))
        peak["all-mb"] = round(max(peak.get("all-mb", 0), sum(rss for rss, _ in procs)))


def run_case(case: str, args: argparse.Namespace, tmp: Path) -> None:
    patched, hostile = case.startswith("patched"), case.endswith("hostile")
    app = PROJECT_DIR
    if hostile:
        app = hostile_clientapp.write_app(PROJECT_DIR, tmp / "app", 1, args.leg, args.times)
    config = {
        "encoder-depth": 2,
        "synthetic-train-size": 90,
        "synthetic-test-size": 30,
        "batch-size": 30,
        "epochs": args.epochs,
        "dirichlet-alpha": 1.0,
        "progress": False,
        "output-dir": str(tmp / "runs"),
    }
    stop, peak = threading.Event(), {}
    with local_superlink(tmp / "home", replace_dead_actors=patched) as link:
        threading.Thread(target=sample_memory, args=(link, stop, peak), daemon=True).start()
        out = flwr_run(link, config, 3, app_dir=app, timeout=args.timeout, stream=False)
        logs = link.flwr("log", str(out.run_id), *link.conn_args(), "--show")
    stop.set()
    errors = re.findall(r"Node (\d+) replied to (\S+) of step (\S+) with an error", logs)
    print(f"{case}: {out.status} in {out.wall_time_s:.1f}s; peak {peak}")
    if (out.run_dir / "summary.json").exists():
        for row in json.loads((out.run_dir / "summary.json").read_text())["history"]:
            print(
                f"  epoch {row['epoch']}: {row['samples-trained']} samples, "
                f"{row['dropped-client-steps']} dropped, {row['epoch-time-s']:.1f}s"
            )
    print(f"  {len(errors)} error replies from {len({e[0] for e in errors})} nodes: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--leg", default="train.backward", help="message type node 1 dies on")
    parser.add_argument("--times", type=int, default=1, help="how many times node 1 dies")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    for case in args.cases:
        with tempfile.TemporaryDirectory(prefix=f"bench-isolation-{case}-") as tmp:
            run_case(case, args, Path(tmp))


if __name__ == "__main__":
    main()

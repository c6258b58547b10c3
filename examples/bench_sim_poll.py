"""Round-trip time of Flower's simulation engine, stock poll against the patched one.

A trivial ServerApp sends one tiny message to each of ``--nodes`` virtual nodes, waits
for every reply (polling every 10 ms, as :class:`mpsl_flwr.protocol.transport.Exchange`
does) and repeats ``--rounds`` times; a trivial ClientApp echoes. Nothing but Flower's
message path is timed, so the figure is the cost of one leg's transport with no
compute behind it. Each arm runs in a fresh process (``flwr.simulation.run_simulation``,
Ray, in process), the arms alternate ``--repeat`` times, and the patched arm applies
:func:`mpsl_flwr.ops.flower_patches.shorten_simulation_poll` before the engine starts.

    python examples/bench_sim_poll.py --nodes 10 --poll 0.005 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp


def round_trips(nodes: int, rounds: int) -> list[float]:
    """Seconds per round trip to all ``nodes``, in this process's simulation."""
    from flwr.simulation import run_simulation

    client, server, times = ClientApp(), ServerApp(), []

    @client.query()
    def echo(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"c": ConfigRecord({"x": 1})}), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        ids = list(grid.get_node_ids())
        while len(ids) < nodes:  # virtual nodes may still be registering
            time.sleep(0.1)
            ids = list(grid.get_node_ids())
        for r in range(rounds):
            messages = [
                Message(RecordDict({"c": ConfigRecord({"x": 1})}), n, "query", group_id=str(r))
                for n in ids
            ]
            started = time.perf_counter()
            pending = set(grid.push_messages(messages))
            while pending:
                pending -= {m.metadata.reply_to_message_id for m in grid.pull_messages(pending)}
                if pending:
                    time.sleep(0.01)
            times.append(time.perf_counter() - started)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    return times[2:]  # the first rounds also start the actors


def arm(nodes: int, rounds: int, poll: float | None) -> dict[str, float]:
    """One arm in a fresh process: the median and mean round trip."""
    cmd = [sys.executable, __file__, "--nodes", str(nodes), "--rounds", str(rounds), "--arm"]
    cmd.append("stock" if poll is None else str(poll))
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--poll", type=float, default=0.005, help="patched wait, seconds")
    parser.add_argument("--repeat", type=int, default=2, help="alternations of the two arms")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.arm is not None:
        if args.arm != "stock":
            from mpsl_flwr.ops import flower_patches

            flower_patches.shorten_simulation_poll(float(args.arm))
        times = round_trips(args.nodes, args.rounds)
        print(json.dumps({"median": statistics.median(times), "mean": statistics.mean(times)}))
        return
    rows = []
    for _ in range(args.repeat):
        for poll in (None, args.poll):
            rows.append((poll, arm(args.nodes, args.rounds, poll)))
            print(f"poll {poll or 'stock (0.1)'}: {rows[-1][1]}", flush=True)
    print(f"\n{args.nodes} nodes, {args.rounds} round trips per arm, tiny messages")
    print("| simulation poll | median round trip s | mean round trip s |\n|---|---|---|")
    for poll, r in rows:
        print(f"| {poll or 'stock (0.1 s)'} | {r['median']:.3f} | {r['mean']:.3f} |")


if __name__ == "__main__":
    main()

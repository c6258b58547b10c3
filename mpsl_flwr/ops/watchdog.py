"""Stop a process group when the process that started it dies, even by SIGKILL.

A launcher stops what it started in ``finally`` clauses, and on SIGTERM and Ctrl-C; a
SIGKILL (or the OOM killer) skips all of that and leaves the SuperLink, its SuperExec
and the run going on unsupervised. So every :class:`~mpsl_flwr.ops.processes.ManagedProcess`
gets a watchdog: a small process in a session of its own that polls its owner's PID and,
once the owner is gone, does what :meth:`ManagedProcess.stop` would have done (SIGTERM to
the group, SIGKILL after a grace period, then the descendants that left the group, by
PID). It exits by itself when the watched group's leader ends first (a normal stop).

    python -m mpsl_flwr.ops.watchdog --owner <pid> --leader <pid>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

from mpsl_flwr.ops.processes import children_of, kill_pids, pid_alive

POLL_S = 0.5
# Descendants that left the group are looked up this often (a /proc scan).
SCAN_EVERY_S = 2.0


def watch(owner: int, leader: int, grace: float = 10.0) -> bool:
    """Wait until ``owner`` or ``leader`` ends; True if the owner died first and the
    group (and its strays) were stopped."""
    known: set[int] = set()
    next_scan = 0.0
    while pid_alive(leader):
        if not pid_alive(owner):
            known.update(children_of(leader))
            stop_group(leader, known, grace)
            return True
        if time.monotonic() >= next_scan:
            known.update(children_of(leader))
            next_scan = time.monotonic() + SCAN_EVERY_S
        time.sleep(POLL_S)
    return False


def stop_group(leader: int, strays: set[int], grace: float) -> None:
    """SIGTERM the group of ``leader``, SIGKILL it after ``grace``, then ``strays``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(leader) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)
    kill_pids(strays, grace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpsl-watchdog", description=__doc__)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--leader", type=int, required=True)
    args = parser.parse_args(argv)
    watch(args.owner, args.leader)
    return 0


if __name__ == "__main__":
    sys.exit(main())

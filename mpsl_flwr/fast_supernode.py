"""``flower-supernode`` with a shorter idle poll: an opt-in patch of Flower 1.41.

A Flower 1.41 SuperNode asks the SuperLink for a message, and when there is none it
sleeps a hard-coded 3 s before asking again (``time.sleep(3)`` in
``flwr.supernode.start_client_internal``); while its ClientApp works it checks for the
reply every 0.5 s. A node that has just sent its reply finds nothing (the server has not
answered yet) and sleeps the full 3 s, so every leg of a sequential protocol such as
MPSL waits about 3 s, whatever the compute: with warm ClientApps that is most of a step.
No option or environment variable changes it.

This entry point runs Flower's own ``flower-supernode`` after replacing the ``time``
module *seen by that one module* with a copy whose ``sleep`` never sleeps longer than
``MPSL_SUPERNODE_POLL`` seconds (default 0.2). Nothing else in Flower is touched. It
checks that the installed Flower is 1.41.x and still has those sleeps, and refuses to
start otherwise, so a Flower upgrade fails loudly instead of silently changing timing.

    MPSL_SUPERNODE_POLL=0.2 python -m mpsl_flwr.fast_supernode --insecure --superlink ...

Cost: each idle node asks the SuperLink 1/poll times a second instead of every 3 s
(one small HTTP request each).
"""

from __future__ import annotations

import inspect
import os
import sys
import time
import types

import flwr

POLL_ENV = "MPSL_SUPERNODE_POLL"
DEFAULT_POLL = 0.2
SUPPORTED_FLWR = "1.41."


def patch(poll: float) -> None:
    """Cap the sleeps of ``flwr.supernode.start_client_internal`` at ``poll`` seconds."""
    from flwr.supernode import start_client_internal as loop

    if not flwr.__version__.startswith(SUPPORTED_FLWR):
        raise RuntimeError(
            f"mpsl_flwr.fast_supernode patches Flower {SUPPORTED_FLWR}x; this is flwr "
            f"{flwr.__version__}. Start flower-supernode directly (without --node-poll)."
        )
    if "time.sleep(3)" not in inspect.getsource(loop):
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer sleeps 3 s between polls; "
            "the patch does not apply. Start flower-supernode directly."
        )
    if not 0.01 <= poll <= 3.0:
        raise ValueError(f"{POLL_ENV} must be between 0.01 and 3 seconds; got {poll}.")
    real_sleep = time.sleep
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    shim.sleep = lambda seconds: real_sleep(min(seconds, poll))  # type: ignore[attr-defined]
    loop.time = shim  # type: ignore[attr-defined]


def main() -> None:
    patch(float(os.environ.get(POLL_ENV, DEFAULT_POLL)))
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()

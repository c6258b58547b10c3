"""``flower-supernode`` with the opt-in timing patches of :mod:`mpsl_flwr.ops.flower_patches`.

Runs Flower's own ``flower-supernode`` entry point after applying the patches that the
environment asks for: ``MPSL_SUPERNODE_POLL`` (cap of the SuperNode's idle poll, Flower
1.41: a fixed 3 s) and ``MPSL_OBJECT_PULL_BACKOFF`` (first retry of a message payload
still being uploaded, Flower: 1 s). Refuses to start on a Flower other than 1.41.x.
``mpsl-deploy --node-poll S`` / ``--fast`` start SuperNodes this way.

    MPSL_SUPERNODE_POLL=0.2 python -m mpsl_flwr.ops.fast_supernode --insecure --superlink ...

Cost: each idle node asks the SuperLink 1/poll times a second instead of every 3 s
(one small HTTP request each).
"""

from __future__ import annotations

import sys

from mpsl_flwr.ops import flower_patches


def main() -> None:
    try:
        flower_patches.apply_from_env()
    except (RuntimeError, ValueError) as err:
        sys.exit(f"mpsl_flwr.ops.fast_supernode: {err}")
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()

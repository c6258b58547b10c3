"""``flower-supernode``, ``flwr-serverapp`` and ``flwr-simulation`` with the opt-in patches
of :mod:`mpsl_flwr.ops.flower_patches`.

Runs Flower's own ``flower-supernode`` (``flwr-serverapp``, ``flwr-simulation``) entry
point after applying the patches that the environment asks for: ``MPSL_SUPERNODE_POLL``
(cap of the SuperNode's idle poll, Flower 1.41: a fixed 3 s), ``MPSL_OBJECT_PULL_BACKOFF``
(first retry of a message payload still being uploaded, Flower: 1 s),
``MPSL_REPLACE_DEAD_ACTORS`` (a simulation replaces a dead ClientApp actor) and
``MPSL_SIMULATION_POLL`` (a simulation's wait between passes over the nodes' inboxes,
Flower: 0.1 s). Refuses to start where a patched Flower function's source is not the
one the patch was written for (flwr 1.41.0/1.42.0). ``mpsl-deploy --node-poll S`` / ``--fast`` start
SuperNodes this way; ``mpsl-run`` starts ``flwr-simulation`` this way, by the same
``PATH`` wrapper as the ServerApp below (a simulation's SuperExec starts
``flwr-simulation`` by name).

    MPSL_SUPERNODE_POLL=0.2 python -m mpsl_flwr.ops.fast_flower flower-supernode --insecure ...

Cost: each idle node asks the SuperLink 1/poll times a second instead of every 3 s
(one small HTTP request each).

**The ServerApp.** The object-pull back-off matters in the ServerApp process too (its
grid pulls the clients' replies), but the app must not import this tooling. How Flower
1.41 starts that process in a deployment: ``flower-superlink --isolation subprocess``
starts ``flower-superexec`` by name (``PATH``), which starts ``flwr-serverapp`` by name
(``subprocess.Popen``, ``TASK_TYPE_TO_COMMAND``) for each run, both inheriting the
SuperLink's environment. So ``mpsl-deploy --object-pull-backoff``/``--fast`` writes a
``flwr-serverapp`` wrapper (:func:`write_wrapper`) into its work dir and puts that dir
first on the SuperLink's ``PATH``; the wrapper runs Flower's ``flwr-serverapp`` through
this module, patched. Why this and not the alternatives: a ``sitecustomize.py`` on
``PYTHONPATH`` would run in *every* Python process of the SuperLink (SuperExec, CLI) and
shadow the interpreter's own ``sitecustomize`` (Debian ships one); patching from the
app's code is what this replaces. The wrapper touches exactly the one process, only when
asked, and fails loudly (the patches' source check) rather than silently.

Flower imports the app from the FAB it installs (first on ``sys.path``). Before handing
over, this module drops every ``mpsl_flwr`` module it imported from ``sys.modules``, so
that the ServerApp's ``mpsl_flwr`` is the FAB's, as without the wrapper; the patches
live in Flower's functions and stay applied.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from pathlib import Path

from mpsl_flwr.ops import flower_patches
from mpsl_flwr.project import PROJECT_DIR

ENTRY_POINTS = {
    "flower-supernode": "flwr.supernode.cli:flower_supernode",
    "flwr-serverapp": "flwr.superlink.cli:flwr_serverapp",
    "flwr-simulation": "flwr.simulation.app:flwr_simulation",
}
"""Flower 1.41's console scripts (``module:function``) that this module can run."""


def write_wrapper(directory: Path, command: str = "flwr-serverapp") -> Path:
    """An executable ``directory/command`` that runs Flower's ``command`` through this
    module with this interpreter; put ``directory`` first on ``PATH`` of the process that
    starts ``command`` by name. Needs this checkout on ``PYTHONPATH``."""
    if command not in ENTRY_POINTS:
        raise ValueError(f"no patched entry point for {command!r}; one of {list(ENTRY_POINTS)}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / command
    python = shlex.quote(sys.executable)
    path.write_text(f'#!/bin/sh\nexec {python} -m {__spec__.name} {command} "$@"\n')
    path.chmod(0o755)
    return path


def checkout_pythonpath() -> str:
    """``PYTHONPATH`` for a process that runs a wrapper: this checkout first, so that the
    wrapper's ``mpsl_flwr.ops`` is this one (the app itself comes from the FAB, which
    Flower puts first on ``sys.path``)."""
    return os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")) if p)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ENTRY_POINTS:
        sys.exit(f"usage: python -m {__spec__.name} {{{','.join(ENTRY_POINTS)}}} [ARGS...]")
    command, *args = argv
    try:
        flower_patches.apply_from_env()
    except (RuntimeError, ValueError) as err:
        sys.exit(f"{__spec__.name}: {err}")
    module, function = ENTRY_POINTS[command].split(":")
    entry_point = getattr(importlib.import_module(module), function)
    for name in [n for n in sys.modules if n == "mpsl_flwr" or n.startswith("mpsl_flwr.")]:
        del sys.modules[name]  # the app's mpsl_flwr comes from its FAB, not this checkout
    sys.argv = [command, *args]  # Flower reads its own name (exit handling, logs)
    sys.exit(entry_point())


if __name__ == "__main__":
    main()

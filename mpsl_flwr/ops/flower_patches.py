"""Opt-in patches of Flower 1.41: two timing constants that dominate a deployed step, and
the restart of a simulation's dead Ray actors.

None has an option or environment variable in Flower 1.41; each is applied only when
asked for (``mpsl-deploy --fast`` / ``--node-poll``; ``mpsl-run`` and the e2e tests for
the restart), checks the installed Flower first, and refuses to apply to anything but
1.41.x, so an upgrade fails loudly rather than silently changing behaviour.

1. **SuperNode idle poll.** ``flwr.supernode.start_client_internal`` sleeps a fixed 3 s
   after asking the SuperLink for a message and finding none, and 0.5 s between checks
   for its ClientApp's reply. A node that has just replied finds nothing (the server has
   not answered yet) and sleeps 3 s, so every leg of a sequential protocol waits ~3 s.
   :func:`cap_supernode_sleeps` gives that one module a ``time`` whose ``sleep`` never
   exceeds ``poll`` seconds.

2. **Object pull back-off.** A message is listed as soon as its header is pushed, while
   its payload objects are still being uploaded; a reader that pulls in that window
   gets "object unavailable" and retries after ``PULL_INITIAL_BACKOFF`` = 1 s (then 2,
   4, ...). A server polling for replies every 10 ms (``protocol.Exchange``), or a node
   polling every 0.2 s, hits that window often, and the leg costs an extra second.
   The window is wide inside a SuperNode too: it creates the ClientApp's task *before*
   it has downloaded the message's payload. :func:`shorten_object_pull_backoff` lowers
   the first back-off of ``pull_objects`` and ``pull_and_inflate_object_from_tree``
   (``flwr.supercore.inflatable.inflatable_utils``; used by the SuperNode, the
   ServerApp's HTTP grid and the ClientApp). It is applied in a process whose env has
   ``MPSL_OBJECT_PULL_BACKOFF`` (see :func:`apply_from_env`), which ``mpsl-deploy --fast``
   sets for the SuperLink (and so its ServerApp) and the SuperNodes. The SuperNodes and
   the ServerApp are started through :mod:`mpsl_flwr.ops.fast_flower`, the ClientApp
   executors are :mod:`mpsl_flwr.ops.warm_clientapp`; the app itself never imports this.

3. **Dead Ray actors stay in the pool.** A simulation runs every virtual node's
   ClientApp in one of a few Ray actors (``floor(CPUs / client-resources-num-cpus)``),
   shared by all nodes: ``BasicActorPool`` hands a message to whichever actor is idle.
   When a ClientApp ends its actor's process (``os._exit``, a segfault, the OOM
   killer), ``ray.get`` raises ``ActorDiedError``, Flower answers that message with an
   error reply and puts the dead actor back in the pool, where every later message that
   it is handed, of any node, fails at once, for the rest of the run. Flower creates its
   actors without ``max_restarts`` (the federation config carries only
   ``num-cpus``/``num-gpus``), and even with it Ray 2.55 fails every task handed to the
   actor while it restarts (``ActorUnavailableError``). :func:`replace_dead_actors`
   makes the pool swap an actor that died for a new one before Flower's error path
   returns it: only the dying node's message fails; the next message handed to the new
   actor waits for it to start. Applied in the ``flwr-simulation`` process (the Ray
   driver) when its env has ``MPSL_REPLACE_DEAD_ACTORS=1``, which
   :mod:`mpsl_flwr.ops.launch` sets, starting that process through
   :mod:`mpsl_flwr.ops.fast_flower`.

:func:`check_flwr_version` is the one check of the installed Flower against the 1.41
internals that these patches and the warm executor rely on.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import types
from typing import Any

import flwr

log = logging.getLogger("mpsl_flwr")

SUPPORTED_FLWR = "1.41."
SUPERNODE_POLL_ENV = "MPSL_SUPERNODE_POLL"
OBJECT_PULL_BACKOFF_ENV = "MPSL_OBJECT_PULL_BACKOFF"
REPLACE_DEAD_ACTORS_ENV = "MPSL_REPLACE_DEAD_ACTORS"


def check_flwr_version(what: str, instead: str) -> None:
    """Raise unless the installed Flower is :data:`SUPPORTED_FLWR`: ``what`` (e.g. "The
    SuperNode poll patch patches") relies on its internals; ``instead`` says what to do."""
    if not flwr.__version__.startswith(SUPPORTED_FLWR):
        raise RuntimeError(
            f"{what} Flower {SUPPORTED_FLWR}x; this is flwr {flwr.__version__}. {instead}"
        )


def _check_version(what: str) -> None:
    check_flwr_version(
        f"{what} patches",
        f"Run without it (unset {SUPERNODE_POLL_ENV}/{OBJECT_PULL_BACKOFF_ENV}/"
        f"{REPLACE_DEAD_ACTORS_ENV}, drop --fast/--node-poll).",
    )


def cap_supernode_sleeps(poll: float) -> None:
    """Cap every sleep of ``flwr.supernode.start_client_internal`` at ``poll`` seconds."""
    from flwr.supernode import start_client_internal as loop

    _check_version("The SuperNode poll patch")
    if "time.sleep(3)" not in inspect.getsource(loop):
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer sleeps 3 s between polls; "
            "the patch does not apply. Start flower-supernode directly."
        )
    if not 0.01 <= poll <= 3.0:
        raise ValueError(f"{SUPERNODE_POLL_ENV} must be between 0.01 and 3 s; got {poll}.")
    real_sleep = time.sleep
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    shim.sleep = lambda seconds: real_sleep(min(seconds, poll))  # type: ignore[attr-defined]
    loop.time = shim


def shorten_object_pull_backoff(initial: float) -> None:
    """First retry of an unavailable object after ``initial`` s instead of 1 s."""
    from flwr.supercore.inflatable import inflatable_utils

    _check_version("The object pull back-off patch")
    if not 0.001 <= initial <= 1.0:
        raise ValueError(f"{OBJECT_PULL_BACKOFF_ENV} must be between 0.001 and 1 s.")
    # pull_objects: SuperNode and ServerApp grid; pull_and_inflate_object_from_tree: a
    # ClientApp reading its task's message (it passes its own default on).
    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = fn.__kwdefaults__ or {}
        if "initial_backoff" not in defaults:
            raise RuntimeError(
                f"flwr's {fn.__name__} has no keyword-only 'initial_backoff' any more; "
                "the patch does not apply."
            )
        defaults["initial_backoff"] = initial


def check_actor_pool() -> None:
    """Raise unless :func:`replace_dead_actors` applies to the installed Flower."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    _check_version("The Ray actor replacement patch")
    fetch = inspect.getsource(BasicActorPool.fetch_result_and_return_actor_to_pool)
    give_back = inspect.getsource(BasicActorPool.add_actor_back_to_pool)
    if "add_actor_back_to_pool(future)" not in fetch or "_future_to_actor" not in give_back:
        raise RuntimeError(
            "flwr's BasicActorPool no longer returns an actor to the pool by its future; "
            "the actor replacement patch does not apply."
        )


def replace_dead_actors() -> None:
    """Have a simulation's actor pool replace a ClientApp actor whose process died (3.)."""
    import ray
    from flwr.app import Context, Message
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    check_actor_pool()
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool
    if getattr(fetch, "replaces_dead_actors", False):
        return

    def fetch_or_replace(pool: BasicActorPool, future: Any) -> tuple[Message, Context]:
        try:
            return fetch(pool, future)
        except ray.exceptions.ActorDiedError:
            dead = pool._future_to_actor[future]
            log.warning("A ClientApp's Ray actor died; replacing it with a new one.")
            ray.kill(dead, no_restart=True)  # type: ignore[arg-type]  # frees its CPUs
            # RayBackend.process_message's error path returns this future's actor to
            # the pool (add_actor_back_to_pool): let that be the new one.
            pool._future_to_actor[future] = pool.create_actor_fn()
            raise

    fetch_or_replace.replaces_dead_actors = True  # type: ignore[attr-defined]
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_or_replace  # type: ignore[method-assign,assignment]


def apply_from_env() -> None:
    """Apply the patches that this process's environment asks for (none by default)."""
    if value := os.environ.get(OBJECT_PULL_BACKOFF_ENV):
        shorten_object_pull_backoff(float(value))
        log.info("Object pull back-off patched to %s s (%s)", value, OBJECT_PULL_BACKOFF_ENV)
    if value := os.environ.get(SUPERNODE_POLL_ENV):
        cap_supernode_sleeps(float(value))
    if os.environ.get(REPLACE_DEAD_ACTORS_ENV) == "1":
        replace_dead_actors()
        log.info("Dead Ray ClientApp actors are replaced (%s)", REPLACE_DEAD_ACTORS_ENV)

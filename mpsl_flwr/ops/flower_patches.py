"""Opt-in patches of Flower 1.41/1.42: the timing constants that dominate a deployed and a
simulated step, and the restart of a simulation's dead Ray actors.

None has an option or environment variable in Flower; each is applied only when asked
for (``mpsl-deploy --fast`` / ``--node-poll``; ``mpsl-run`` and the e2e tests for the
restart; ``simulation_poll`` of the launcher), checks the source of the Flower functions
it touches first, and refuses to apply to any other source, so an upgrade fails loudly
rather than silently changing behaviour.

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

4. **Simulation poll.** A simulation moves the ServerApp's messages to its Ray workers
   in ``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``: one pass over
   every node's inbox, then ``f_stop.wait(0.1)``, so every leg of a step waits up to
   0.1 s before a ClientApp sees it. :func:`shorten_simulation_poll` replaces that loop
   with the same pass and a shorter wait, never shorter than ``SCAN_SHARE_FACTOR`` times
   the pass itself took, so that at many nodes (a pass scans the whole message store once
   per node, under the state's lock) the scan takes at most a fifth of the thread's time
   and cannot starve the ServerApp thread that shares the process (and the GIL). Applied
   in the ``flwr-simulation`` process when its env has ``MPSL_SIMULATION_POLL`` (seconds),
   which :func:`mpsl_flwr.ops.launch.simulation_superlink` sets when asked
   (``simulation_poll``); ``run_api`` looks the loop up by name when it starts its
   thread, after the patch is in.

**What each patch is checked against.** Not Flower's version string: the source text of
every Flower function a patch replaces or relies on (:data:`PATCHED_SOURCES`, sha256 of
``inspect.getsource``), recorded from flwr 1.41.0 and byte-identical in 1.42.0. A
patch refuses, in one line naming the function and what to do, to apply to any other
source. :mod:`mpsl_flwr.ops.warm_clientapp`, which patches nothing but runs ClientApp
tasks with Flower's internals, is checked the same way (:data:`WARM_CLIENTAPP`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import os
import threading
import time
import types
from collections.abc import Callable
from queue import Queue
from typing import Any

import flwr

log = logging.getLogger("mpsl_flwr")

SUPERNODE_POLL_ENV = "MPSL_SUPERNODE_POLL"
OBJECT_PULL_BACKOFF_ENV = "MPSL_OBJECT_PULL_BACKOFF"
REPLACE_DEAD_ACTORS_ENV = "MPSL_REPLACE_DEAD_ACTORS"


SIMULATION_POLL_ENV = "MPSL_SIMULATION_POLL"
SCAN_SHARE_FACTOR = 4.0
"""The patched simulation poll waits at least this many times as long as its last pass
over the nodes took: the pass uses at most 1 / (1 + this) of the thread's time."""

WARM_CLIENTAPP = "mpsl_flwr.ops.warm_clientapp"
"""The key of :data:`PATCHED_SOURCES` for what :mod:`mpsl_flwr.ops.warm_clientapp` relies
on: it patches nothing, but acquires and runs ClientApp tasks with Flower's own steps."""

PATCHED_SOURCES: dict[str, dict[str, str | tuple[str, ...]]] = {
    SUPERNODE_POLL_ENV: {
        "flwr.supernode.start_client_internal:start_client_internal": (
            "9e89a6eb68fbec6821e817cd2c09f7894fc7b0f5725c2365b19a7122307f11f3"
        ),
        "flwr.supernode.start_client_internal:_push_messages": (
            "00bb86faffdec114db87e7f716af2acd901d12284e44f51f5c2a84704db05f64"
        ),
    },
    OBJECT_PULL_BACKOFF_ENV: {
        "flwr.supercore.inflatable.inflatable_utils:pull_objects": (
            "31bb2de46b450e6acfadb7a8bb15e3f2074bb112199826a40a5eaa648bad5b2b"
        ),
        "flwr.supercore.inflatable.inflatable_utils:pull_and_inflate_object_from_tree": (
            "139811483a15e4a6c1f8523614c12f28dd3049194e5713816be0931387adb1cf"
        ),
    },
    REPLACE_DEAD_ACTORS_ENV: {
        "flwr.simulation.ray_transport.ray_actor:"
        "BasicActorPool.fetch_result_and_return_actor_to_pool": (
            "4e9babbe276dedd796dea84d4b55d84d638300152602c4624ff7e9796a07a24a"
        ),
        "flwr.simulation.ray_transport.ray_actor:BasicActorPool.add_actor_back_to_pool": (
            "e88f89e6e878f4ce106cf1ef59b4aec3f50882ce408d6df0ab7e1953cf375d96"
        ),
        "flwr.server.superlink.fleet.vce.backend.raybackend:RayBackend.process_message": (
            "32a5db14180222d31bb6d622529f0cccab652d4f6c35fd137560240da84010b7"
        ),
    },
    SIMULATION_POLL_ENV: {
        "flwr.server.superlink.fleet.vce.vce_api:add_messages_to_queue": (
            "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"
        ),
        "flwr.server.superlink.fleet.vce.vce_api:run_api": (
            "f85c0cd6e902752f455c00ab9c7212c1cd94a8c681fa9bf294ba967463390898"
        ),
    },
    WARM_CLIENTAPP: {
        # The steps of flwr-clientapp it runs in-process, and the functions it calls.
        "flwr.supernode.runtime.run_clientapp:run_clientapp": (
            "6ce09559f3a2f5dcafb7d08f4b443585d76b9b53b9cb29ba1ec06a6982163443"
        ),
        "flwr.supernode.runtime.run_clientapp:pull_task_input": (
            "5607a23e1673ee876930c1b35685b8dfdfd8b3776a436560b0467042e15fc695"
        ),
        "flwr.supernode.runtime.run_clientapp:push_message": (
            "07cb512c93e065a93a4cba3facc7d37dd99758c56835065a63fdfbfc604dcd8a"
        ),
        "flwr.supernode.runtime.run_clientapp:push_task_output": (
            "9206407456e79e17338d367de7c21e2d840d939de378c03ac61da6cc2b57a3c6"
        ),
        # How flower-superexec acquires a task and starts flwr-clientapp for it (run_cold).
        # 1.42 only drops a tracing span's traceparent (of the removed
        # RuntimeTracingInterceptor cache); the executor traces nothing.
        "flwr.supercore.superexec.run_superexec:run_superexec": (
            "d11f4e7fbc8f0b121804772495484fae8987b2b52af8b2baa70baf40d5929e26",  # 1.41.0
            "91e7a33c5b898f33249c29d2058c57637ca7668a14c27296d2506dc98ac84f9b",  # 1.42.0
        ),
        "flwr.supercore.superexec.executor.subprocess_executor:SubprocessExecutor.launch": (
            "83abf3dbe02281fdf384ef650928e34eccc073dadcf690d34e9cb0eaab46b56c"
        ),
        "flwr.supernode.cli.flwr_clientapp:_parse_args_run_flwr_clientapp": (
            "91fd9c4107d220a5b5d181862c7a0d55666185112eb7b4eb058e8459cff8f946"
        ),
        "flwr.common.args:add_args_flwr_app_common": (
            "2d37c796ba101c8fa7be081d811d409ede1fe1e340ecd84d24a27562bd2ef607"
        ),
        # The Runtime API client, its interceptors and retries, the task heartbeat.
        "flwr.supercore.runtime.runtime_http_client:RuntimeHttpClient": (
            "9d66e89a620521272517c1d0e1703c240b94f9037b012989084901dae9317268"
        ),
        "flwr.supercore.interceptors.http.runtime_token:RuntimeTokenHttpInterceptor": (
            "06cbf14d2ea81c278ff1bbf715727c41387287c7829cc7446a3a2307ff448ac4"
        ),
        "flwr.supercore.interceptors.http.runtime_version:RuntimeVersionHttpInterceptor": (
            "32dc4f3d763a9ca00f561f89e63d776e00278db43f59a265698bc50267269b37"
        ),
        "flwr.supercore.retry.http_retry:make_simple_http_retry_invoker": (
            "49e12326a4b17e2648852ef33922c41f7b4a7302d43a5afc2a2e9830b7ab801a"
        ),
        "flwr.supercore.heartbeat:HeartbeatSender": (
            "27714c8e35121c84b56a5cfb5e3147bc561ca163983efb1bf326bb48e61ca7e3"
        ),
        "flwr.supercore.heartbeat:make_task_heartbeat_fn_http": (
            "a50247986fc79b04c5f3a555d3d6eaf6b72fd72d43d0753103f9b68c43ed0326"
        ),
        "flwr.supercore.app_utils:start_parent_process_monitor": (
            "0fe6df28b3175305eddbeccadef0aff2f79f6652d5b3b1a2697dc5d746d1515a"
        ),
        # Installing and loading the FAB's ClientApp, calling it, its error reply.
        "flwr.cli.install:install_from_fab": (
            "481bd04cde5823220658a8a3e84e827a5ef38254223972e4e14c4cb3968e917e"
        ),
        "flwr.clientapp.utils:get_load_client_app_fn": (
            "f7790dd641bafaff5089017c31f804fc7aa93c0d0eec49be72a3b8585cec4d05"
        ),
        "flwr.clientapp.client_app:ClientApp.__call__": (
            "9ac8d938c6eef73d38610b92d445882920720e97b50820b818488a901e466c27"
        ),
        "flwr.clientapp.client_app:LoadClientAppError": (
            "c2dce8f5e6fb7b7590a86779c17dcfc5622a4d562b499d7754e4befbbf3be9cf"
        ),
        "flwr.app.message.message:Message.__init__": (
            "c56bfbd083e6a5381fdf8d2d0a070840c8191dea2e5e82c8538256292b62993c"
        ),
        "flwr.app.error:Error": (
            "8876af1cd224668862929eb8ccce35b14d9bfd03e66a63de6b6fe15cc0643dfa"
        ),
        "flwr.common.constant:ErrorCode": (
            "4889fc3e5b669ac5091017657337120782ba9078a284beaa7a112555397dc120"
        ),
        "flwr.common.constant:SubStatus": (
            "3250f760cd3385b2a5cd6d89a2f018c5b4e1f53a69f88e1767aed97d3f42b952"
        ),
        "flwr.supercore.constant:TaskType": (
            "83fa24c88e9291ed483e69f26431b05dd0bf14a2fa23383000c2d49dcd0907b4"
        ),
        # The generated modules of every protobuf message it sends or reads (the
        # messages of flwr/proto/runtime.proto it uses and the types they contain).
        "flwr.proto.runtime_pb2": (
            "26de3ed4d231b6da9a54f89f5bd670cec98efd55e33b656f5df0e507473ee043"
        ),
        "flwr.proto.message_pb2": (
            "bf563aa4df8dca0be51bdb2369921d2946927f0bb46145274b4f8aaba3115732"
        ),
        "flwr.proto.task_pb2": "5cbb63e25b42eb8ce48b57715b42174aaa0a7bd125f31478126c6be12c784b5c",
        "flwr.proto.run_pb2": "909ef83fc4902fb0b086965dc4d43d933c3e4ee051a04221c3592adc5f5ca563",
        "flwr.proto.fab_pb2": "4039151c64469ae82341052237c03fa24a696797b6a498b92a2a639d6985e9ee",
        "flwr.proto.federation_config_pb2": (
            "8815ba64d339e4748c28d907c2d091a33915af33cfe1a38bdf3a477855ebddee"
        ),
        "flwr.proto.node_pb2": "1ae2c36660f87bd2c85d808ac00cd1907a001d50637081718d01908bff738ae3",
        "flwr.proto.recorddict_pb2": (
            "2f698d4b2215580d9d708d71588de08f49e4b6e0c7620c5b6cbb9545029553be"
        ),
        "flwr.proto.transport_pb2": (
            "c6a0c5da82343f3027747d7b3bcd12424c8e4ff405f66ec2434d7ae877bb5034"
        ),
        "flwr.proto.error_pb2": (
            "c94db6c4e9e276885983674023844f7426f4e1456efb707835fba32cf0916ae0"
        ),
    },
}
"""Per patch (by its environment variable), and for :data:`WARM_CLIENTAPP`: each Flower
object (``module:qualname``, or a module) it replaces or relies on, and the sha256 of its
source in flwr 1.41.0 and 1.42.0: one digest where the two are identical, else both."""


def flower_object(name: str) -> Any:
    """The Flower object ``module:qualname`` names (a function, a method, a class), or
    the module ``module``."""
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def source_digest(obj: Any) -> str:
    """sha256 of ``obj``'s source text. ``inspect.getsource`` unwraps ``__wrapped__``,
    so a function this module has already patched reads as the Flower one it wraps."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def check_sources(key: str) -> None:
    """Raise, in one line, unless every Flower object that ``key`` (a patch's environment
    variable, or :data:`WARM_CLIENTAPP`) names in :data:`PATCHED_SOURCES` has exactly
    a source it was written for."""
    for name, expected in PATCHED_SOURCES[key].items():
        accepted = (expected,) if isinstance(expected, str) else expected
        try:
            digest = source_digest(flower_object(name))
        except (ImportError, AttributeError, OSError, TypeError):  # gone, or no source
            digest = None
        if digest not in accepted:
            if key == WARM_CLIENTAPP:
                written_for = key
                instead = (
                    "run the SuperNode with --isolation subprocess instead (mpsl-deploy "
                    "without --fast/--warm-clientapp), or port the executor to this Flower"
                )
            else:
                written_for = f"the {key} patch"
                instead = (
                    f"unset {key} (drop --fast/--node-poll/--simulation-poll) or update "
                    "mpsl_flwr/ops/flower_patches.py for this Flower"
                )
            raise RuntimeError(
                f"{name} in flwr {flwr.__version__} is not the source {written_for} was "
                f"written for (flwr 1.41.0/1.42.0); {instead}."
            )


def cap_supernode_sleeps(poll: float) -> None:
    """Cap every sleep of ``flwr.supernode.start_client_internal`` at ``poll`` seconds."""
    from flwr.supernode import start_client_internal as loop

    check_sources(SUPERNODE_POLL_ENV)
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

    check_sources(OBJECT_PULL_BACKOFF_ENV)
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
    check_sources(REPLACE_DEAD_ACTORS_ENV)


def replace_dead_actors() -> None:
    """Have a simulation's actor pool replace a ClientApp actor whose process died (3.)."""
    import ray
    from flwr.app import Context, Message
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    check_actor_pool()
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool
    if getattr(fetch, "replaces_dead_actors", False):
        return

    @functools.wraps(fetch)  # its source reads as Flower's (check_sources)
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


def shorten_simulation_poll(interval: float) -> None:
    """A simulation hands messages to its workers every ``interval`` s, not 0.1 s (4.)."""
    from flwr.server.superlink.fleet.vce import vce_api

    check_sources(SIMULATION_POLL_ENV)
    if not 0.001 <= interval <= 0.1:
        raise ValueError(f"{SIMULATION_POLL_ENV} must be between 0.001 and 0.1 s; got {interval}.")
    stock = inspect.unwrap(vce_api.add_messages_to_queue)
    vce_api.add_messages_to_queue = functools.wraps(stock)(_message_pump(interval))


def _message_pump(interval: float) -> Callable[..., None]:
    """``add_messages_to_queue`` of Flower 1.41 with the wait after each pass shortened
    to ``interval``, or :data:`SCAN_SHARE_FACTOR` times the pass, whichever is longer."""

    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            started = time.perf_counter()
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(max(interval, SCAN_SHARE_FACTOR * (time.perf_counter() - started)))

    add_messages_to_queue.poll_interval = interval  # type: ignore[attr-defined]
    return add_messages_to_queue


def apply_from_env() -> None:
    """Apply the patches that this process's environment asks for (none by default)."""
    if value := os.environ.get(OBJECT_PULL_BACKOFF_ENV):
        shorten_object_pull_backoff(float(value))
        log.info("Object pull back-off patched to %s s (%s)", value, OBJECT_PULL_BACKOFF_ENV)
    if value := os.environ.get(SUPERNODE_POLL_ENV):
        cap_supernode_sleeps(float(value))
    if value := os.environ.get(SIMULATION_POLL_ENV):
        shorten_simulation_poll(float(value))
        log.info("Simulation poll patched to %s s (%s)", value, SIMULATION_POLL_ENV)
    if os.environ.get(REPLACE_DEAD_ACTORS_ENV) == "1":
        replace_dead_actors()
        log.info("Dead Ray ClientApp actors are replaced (%s)", REPLACE_DEAD_ACTORS_ENV)

"""Simulation isolation (issue 16, item 7), without Ray: the actor pool patch and how the
launcher applies it. The real thing, a virtual client that kills its process in a
``flwr run`` simulation, is ``tests/test_e2e.py::test_a_virtual_client_that_kills_...``."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import ray
from flwr.simulation.ray_transport.ray_actor import BasicActorPool

from mpsl_flwr.ops import flower_patches
from mpsl_flwr.ops.launch import simulation_superlink


class FakeActor:
    def __init__(self, name: str) -> None:
        self.name = name


def _pool(monkeypatch, died: set[str]) -> BasicActorPool:
    """A BasicActorPool of two fake actors; ``ray.get`` of a job on an actor in ``died``
    raises ``ActorDiedError``, as when the actor's process exits."""
    monkeypatch.setattr(
        BasicActorPool,
        "fetch_result_and_return_actor_to_pool",
        BasicActorPool.fetch_result_and_return_actor_to_pool,
    )
    flower_patches.replace_dead_actors()
    created = iter(f"new-{i}" for i in range(10))

    def get(future: str):
        if future in died:
            raise ray.exceptions.ActorDiedError()
        return future, future, "context"  # (cid, reply, context): the reply names the actor

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    pool = BasicActorPool.__new__(BasicActorPool)
    pool.pool = [FakeActor("a"), FakeActor("b")]
    pool._future_to_actor = {}
    pool.num_actors = 2
    pool.create_actor_fn = lambda: FakeActor(next(created))
    return pool


def _run(pool: BasicActorPool, job: str) -> str:
    """What ``RayBackend.process_message`` does with a pool, job ``job``."""
    future = pool.submit(lambda actor, *args: actor.name, (None, None, job, None))
    try:
        return pool.fetch_result_and_return_actor_to_pool(future)[0]
    except Exception:
        pool.add_actor_back_to_pool(future)
        raise


def test_a_dead_actor_is_replaced_and_only_its_message_fails(monkeypatch) -> None:
    pool = _pool(monkeypatch, died={"b"})
    with pytest.raises(ray.exceptions.ActorDiedError):
        _run(pool, "dies")  # pops "b", the last idle actor
    assert sorted(a.name for a in pool.pool) == ["a", "new-0"]
    assert [_run(pool, f"m{i}") for i in range(4)] == ["new-0"] * 4  # never "b" again


def test_a_client_app_exception_keeps_its_actor(monkeypatch) -> None:
    pool = _pool(monkeypatch, died=set())
    monkeypatch.setattr(ray, "get", lambda future: (_ for _ in ()).throw(ValueError("x")))
    with pytest.raises(ValueError):
        _run(pool, "raises")
    assert sorted(a.name for a in pool.pool) == ["a", "b"]


def test_the_local_superlink_starts_the_patched_simulation(tmp_path: Path) -> None:
    link = simulation_superlink(tmp_path / "home")
    wrapper = shutil.which("flwr-simulation", path=link.env["PATH"])
    assert wrapper == str(tmp_path / "home" / "bin" / "flwr-simulation")
    assert link.env[flower_patches.REPLACE_DEAD_ACTORS_ENV] == "1"
    done = subprocess.run([wrapper, "--help"], env=link.env, capture_output=True, text=True)
    assert done.returncode == 0 and "flwr-simulation" in done.stdout, done.stderr
    stock = simulation_superlink(tmp_path / "stock", replace_dead_actors=False).env
    assert shutil.which("flwr-simulation", path=stock["PATH"]) != wrapper
    assert flower_patches.REPLACE_DEAD_ACTORS_ENV not in stock


# --- The source checks of every patch, and the simulation poll (issue 14) ---------------


@pytest.mark.parametrize("env", sorted(flower_patches.PATCHED_SOURCES))
def test_the_installed_flower_passes_every_source_check(env: str) -> None:
    flower_patches.check_sources(env)


def test_a_modified_flower_function_is_refused_naming_it(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:  # not Flower's
        f_stop.wait(1.0)

    monkeypatch.setattr(vce_api, "add_messages_to_queue", add_messages_to_queue)
    with pytest.raises(RuntimeError) as err:
        flower_patches.shorten_simulation_poll(0.01)
    message = str(err.value)
    assert "\n" not in message
    assert "vce_api:add_messages_to_queue" in message
    assert flower_patches.SIMULATION_POLL_ENV in message and "unset" in message
    assert vce_api.add_messages_to_queue is add_messages_to_queue  # nothing was patched


def test_a_changed_actor_pool_method_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(BasicActorPool, "add_actor_back_to_pool", lambda self, future: None)
    with pytest.raises(RuntimeError, match=r"BasicActorPool\.add_actor_back_to_pool"):
        flower_patches.check_actor_pool()


class _State:
    """A LinkState with one message for node 1, handed out once."""

    def __init__(self) -> None:
        self.waiting = ["msg"]

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        out, self.waiting = (self.waiting, []) if node_id == 1 else ([], self.waiting)
        return out


def test_the_simulation_poll_patch_changes_the_wait(monkeypatch) -> None:
    import threading
    from queue import Queue

    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    flower_patches.shorten_simulation_poll(0.005)
    pump = vce_api.add_messages_to_queue
    assert pump.poll_interval == 0.005
    flower_patches.check_sources(flower_patches.SIMULATION_POLL_ENV)  # wraps Flower's
    flower_patches.shorten_simulation_poll(0.02)  # again: replaces, never stacks
    assert vce_api.add_messages_to_queue.poll_interval == 0.02

    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(float(timeout or 0))
            if len(waits) == 3:
                self.set()
            return self.is_set()

    queue: Queue[str] = Queue()
    vce_api.add_messages_to_queue(_State(), queue, {1: 0, 2: 1}, Stop())
    assert queue.get_nowait() == "msg" and queue.empty()
    assert waits == [0.02] * 3  # Flower's loop waits 0.1 s per pass
    with pytest.raises(ValueError, match=flower_patches.SIMULATION_POLL_ENV):
        flower_patches.shorten_simulation_poll(0.5)


def test_the_simulation_poll_backs_off_when_a_pass_is_slow(monkeypatch) -> None:
    import threading
    from queue import Queue

    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    flower_patches.shorten_simulation_poll(0.001)

    class Slow(_State):
        def get_message_ins(self, node_id: int, limit: int) -> list[str]:
            time.sleep(0.01)
            return []

    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(float(timeout or 0))
            self.set()
            return True

    vce_api.add_messages_to_queue(Slow(), Queue(), {1: 0, 2: 1}, Stop())
    assert waits[0] >= flower_patches.SCAN_SHARE_FACTOR * 0.02


def test_the_local_superlink_passes_the_simulation_poll(tmp_path: Path) -> None:
    env = simulation_superlink(tmp_path / "home", simulation_poll=0.005).env
    assert env[flower_patches.SIMULATION_POLL_ENV] == "0.005"
    assert shutil.which("flwr-simulation", path=env["PATH"]) == str(
        tmp_path / "home" / "bin" / "flwr-simulation"
    )
    assert flower_patches.SIMULATION_POLL_ENV not in simulation_superlink(tmp_path / "s").env

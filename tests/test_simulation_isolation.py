"""Simulation isolation (issue 16, item 7), without Ray: the actor pool patch and how the
launcher applies it. The real thing, a virtual client that kills its process in a
``flwr run`` simulation, is ``tests/test_e2e.py::test_a_virtual_client_that_kills_...``."""

from __future__ import annotations

import shutil
import subprocess
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

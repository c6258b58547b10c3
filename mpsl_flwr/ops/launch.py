"""Run the app under ``flwr run`` on a private, local SuperLink, and clean up after.

``flwr run .`` on its own starts a background SuperLink on fixed ports (39091/39093)
that outlives the run and is silently shared by every project on the machine, and that
re-installs the app's dependencies on each run. This launcher instead starts its own
``flower-superlink`` (simulation mode) on free ports, under its own ``FLWR_HOME`` and
with runtime dependency installation off, submits the run, streams its logs, checks
``finished:completed`` with ``flwr list``, prints the results table, and stops the
SuperLink it started by process group, on success, failure or Ctrl-C. Its simulations
replace a Ray actor whose ClientApp killed its process
(:func:`~mpsl_flwr.ops.flower_patches.replace_dead_actors`).

    mpsl-run --nodes 10 --run-config "epochs=3 dataset='synthetic-va'"

The SuperLink is :class:`mpsl_flwr.ops.superlink.SuperLink` (shared with
:mod:`mpsl_flwr.ops.deploy`); the run's name and directory are chosen by
:mod:`mpsl_flwr.ops.runs`; the command line is :func:`mpsl_flwr.cli.run`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mpsl_flwr.config import resolve_config, toml_value
from mpsl_flwr.ops import fast_flower, flower_patches
from mpsl_flwr.ops.app_staging import staged_app
from mpsl_flwr.ops.processes import executable, owned_temp_dir, sigterm_raises_exit
from mpsl_flwr.ops.runs import (
    RunOutcome,
    absolute_local_paths,
    choose_run_dir,
    keep_logs,
    own_run_dir,
    summary_status,
)
from mpsl_flwr.ops.superlink import FlwrCli, SuperLink
from mpsl_flwr.preflight import preflight
from mpsl_flwr.project import PROJECT_DIR
from mpsl_flwr.results import SUMMARY, format_table

HOME_PREFIX = "mpsl-flwr-home-"
"""Temporary FLWR_HOMEs of launchers; an orphaned one is removed at the next start."""

__all__ = ["flwr_run", "local_superlink", "main", "report", "simulation_superlink"]


def simulation_superlink(
    flwr_home: Path, replace_dead_actors: bool = True, simulation_poll: float | None = None
) -> SuperLink:
    """A (not yet started) simulation SuperLink under ``flwr_home``.

    ``replace_dead_actors``: its simulations run through :mod:`mpsl_flwr.ops.fast_flower`
    with a ClientApp actor whose process died replaced by a new one
    (:func:`~mpsl_flwr.ops.flower_patches.replace_dead_actors`), so that a virtual client
    that kills its process loses its own message only, not those of the nodes that
    share its Ray actor. ``simulation_poll``: seconds the simulation waits between
    passes over the nodes' inboxes (Flower: 0.1;
    :func:`~mpsl_flwr.ops.flower_patches.shorten_simulation_poll`); None keeps Flower's.
    """
    settings: dict[str, str | None] = {}
    # The simulation process refuses to start if a patch does not apply, and Flower
    # 1.41 does not notice: the run would wait for its timeout. Check here instead.
    if replace_dead_actors:
        flower_patches.check_actor_pool()
        settings[flower_patches.REPLACE_DEAD_ACTORS_ENV] = "1"
    if simulation_poll is not None:
        flower_patches.check_sources(flower_patches.SIMULATION_POLL_ENV)
        settings[flower_patches.SIMULATION_POLL_ENV] = str(simulation_poll)
    if not settings:
        return SuperLink(flwr_home, simulation=True)
    wrapper = fast_flower.write_wrapper(flwr_home / "bin", "flwr-simulation")
    settings["PYTHONPATH"] = fast_flower.checkout_pythonpath()
    return SuperLink(flwr_home, simulation=True, settings=settings, bin_dirs=(wrapper.parent,))


@contextlib.contextmanager
def local_superlink(
    flwr_home: Path | None = None,
    replace_dead_actors: bool = True,
    simulation_poll: float | None = None,
) -> Iterator[SuperLink]:
    """A private :func:`simulation_superlink`, started, for the ``with`` block."""
    with contextlib.ExitStack() as stack:
        if flwr_home is None:
            flwr_home = stack.enter_context(owned_temp_dir(HOME_PREFIX))
        link = simulation_superlink(flwr_home, replace_dead_actors, simulation_poll)
        # The SuperLink runs in its own session: a SIGTERM that skipped ``finally`` would
        # leave it orphaned on its ports (a SIGKILL is its watchdog's business).
        with sigterm_raises_exit():
            link.start()
            try:
                yield link
            finally:
                link.stop()


def flwr_run(
    link: FlwrCli,
    run_config: dict[str, Any],
    num_supernodes: int | None,
    app_dir: Path = PROJECT_DIR,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    timeout: float = 3600.0,
    stream: bool = True,
    status_interval: float = 10.0,
) -> RunOutcome:
    """Submit one run with ``run_config`` overrides and wait for its end.

    ``num_supernodes`` sizes a simulation; None submits to a deployment, whose nodes
    are the SuperNodes connected to ``link``. Completion is confirmed with
    ``flwr list``; as each call of the CLI costs about a second of CPU, it is asked every
    ``status_interval`` seconds, and at once when the run's summary.json leaves
    ``running``. The run is stopped if a process it needs dies (``link.check_alive``).
    """
    run_config = {**run_config, **absolute_local_paths(run_config)}
    run_dir = choose_run_dir(run_config, app_dir)
    print(f"Run directory: {run_dir}", flush=True)
    overrides = {**run_config, "output-dir": str(run_dir.parent), "run-name": run_dir.name}
    federation = []
    if num_supernodes is not None:
        federation = [
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus={_num(cpus_per_client)} "
            f"client-resources-num-gpus={_num(gpus_per_client)}",
        ]
    t0 = time.time()
    with staged_app(app_dir) as app:
        out = link.flwr(
            "run",
            str(app),
            *link.conn_args(),
            "--format",
            "json",
            "--run-config",
            _toml_pairs(overrides),
            *federation,
        )
    answer = json.loads(out)
    if "run-id" not in answer:
        raise RuntimeError(f"flwr run did not start the run: {answer.get('error-message', answer)}")
    run_id = int(answer["run-id"])
    logs = None
    if stream:
        logs = subprocess.Popen(
            [executable("flwr"), "log", str(run_id), *link.conn_args()], env=link.env
        )
    status = ""
    chosen = run_dir
    try:
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while True:
            now = time.monotonic()
            run_dir = own_run_dir(chosen, run_id) or chosen
            if summary_status(run_dir) not in (None, "running"):
                next_check = min(next_check, now)  # the ServerApp is done: confirm soon
            if now >= next_check:
                status = link.run_status(run_id)
                if status.startswith("finished"):
                    run_dir = own_run_dir(chosen, run_id) or chosen
                    break
                finishing = summary_status(run_dir) not in (None, "running")
                next_check = now + (2.0 if finishing else status_interval)
            try:
                link.check_alive()
            except RuntimeError as err:
                with contextlib.suppress(Exception):
                    link.flwr("stop", str(run_id), *link.conn_args())
                status = f"aborted: {err}"
                break
            if now > deadline:
                link.flwr("stop", str(run_id), *link.conn_args())
                status = f"timeout after {timeout:.0f}s"
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            link.flwr("stop", str(run_id), *link.conn_args())
        raise
    finally:
        if logs is not None:
            try:
                logs.wait(timeout=15)
            except subprocess.TimeoutExpired:
                logs.terminate()
                logs.wait(timeout=5)
    return RunOutcome(run_id, status, run_dir, time.time() - t0, streamed=stream)


def _num(x: float) -> int | float:
    """Flower wants whole CPU/GPU counts as integers."""
    return int(x) if float(x).is_integer() else x


def _toml_pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


def main(
    overrides: dict[str, Any],
    nodes: int,
    flwr_home: Path | None = None,
    app_dir: Path = PROJECT_DIR,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    timeout: float = 3600.0,
) -> int:
    """``mpsl-run`` (arguments parsed by :func:`mpsl_flwr.cli.run`): the exit code."""
    cfg = resolve_config(overrides, app_dir)
    preflight(cfg, nodes * cfg.clients_per_node)  # fail fast, before any process
    with contextlib.ExitStack() as stack:
        home = flwr_home or stack.enter_context(owned_temp_dir(HOME_PREFIX))
        with local_superlink(home) as link:
            print(f"SuperLink on 127.0.0.1:{link.port} (FLWR_HOME={home})", flush=True)
            outcome = flwr_run(
                link,
                overrides,
                nodes,
                app_dir=app_dir,
                cpus_per_client=cpus_per_client,
                gpus_per_client=gpus_per_client,
                timeout=timeout,
            )
        # After the stop (the log is complete), before the temporary home goes.
        logs = keep_logs([p for p in [link.log_path] if p], outcome.run_dir)
    return report(outcome, f"see {logs} and the logs above")


def report(outcome: RunOutcome, where_to_look: str) -> int:
    """Print how a run ended and its results table; the process exit code.

    When the run's own log was streamed, the ServerApp has printed the table and the
    results path already (:func:`strategies.runner` does, for plain ``flwr run``), so
    they are not printed again.
    """
    print(f"\nRun {outcome.run_id}: {outcome.status} in {outcome.wall_time_s:.0f}s", flush=True)
    if not outcome.ok:
        print(f"The run did not complete; {where_to_look}.", file=sys.stderr)
        return 1
    if outcome.streamed:
        print(f"Summary: {outcome.run_dir / SUMMARY}")
        return 0
    summary = outcome.summary()
    cols = [
        c
        for c in (
            "epoch",
            "train-loss",
            "test-accuracy",
            "test-rsum",
            "mb-up-per-client",
            "mb-down-per-client",
            "epoch-time-s",
        )
        if summary["history"] and c in summary["history"][0]
    ]
    print("\n" + format_table(summary["history"], cols))
    print(f"\nResults: {outcome.run_dir}")
    print(f"Summary: {outcome.run_dir / SUMMARY}")
    return 0

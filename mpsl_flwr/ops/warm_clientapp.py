"""A long-lived ClientApp executor for a SuperNode started with ``--isolation process``.

With Flower's default ``--isolation subprocess``, a SuperNode's SuperExec starts a fresh
``flwr-clientapp`` process for *every message*. For this app that process spends about
4-5 s importing torch, timm and the app (and regenerating its data) before it runs a
handler that takes about 0.1 s: most of a deployed MPSL step.

With ``--isolation process`` Flower leaves running the ClientApp to a process outside
the SuperNode that polls the SuperNode's Runtime API for tasks. This module is such a
process. It acquires ClientApp tasks as ``flower-superexec`` does and runs each one
*in this process*, with Flower's own steps of ``flwr-clientapp`` (pull the task input,
call the ClientApp, push the reply and the updated context), so imports, generated data
and frozen weights stay warm across messages, as they do in a simulation's Ray actors.
``context.state`` still comes from the SuperNode with every message.

Scope and limits: it serves one FAB at a time. The FAB of the first task is installed
and imported once; a task of another FAB (new code, another app) is run in a fresh
``flwr-clientapp`` process, as Flower itself runs it, and the executor then re-executes
itself so that later tasks import the new FAB warm. A ClientApp that crashes the
interpreter takes the executor down (the SuperNode then sees the task expire).

It uses Flower internals (``RuntimeHttpClient``, the steps of ``flwr.supernode.runtime.
run_clientapp``, ``flower-superexec``'s task acquisition, the Runtime API's protobuf
messages). Like the patches of :mod:`mpsl_flwr.ops.flower_patches` it checks, at start-up,
the source of each of them against the one it was written for (flwr 1.41.0 and 1.42.0:
``flower_patches.PATCHED_SOURCES[WARM_CLIENTAPP]``), not Flower's version string, and
refuses, in one line naming the changed one, to run on any other.

    python -m mpsl_flwr.ops.warm_clientapp --runtime-api-address 127.0.0.1:9094 --parent-pid N
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

from mpsl_flwr.ops import flower_patches

log = logging.getLogger("mpsl_flwr.warm_clientapp")


def _client(address: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the SuperNode's Runtime API on loopback
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _heartbeat_fn(client: RuntimeHttpClient):
    """Task heartbeat that reports failure instead of signalling this process."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(request).success)
        except Exception:  # a failed beat is retried by HeartbeatSender
            return False

    return beat


@dataclass
class WarmExecutor:
    """Acquires the SuperNode's ClientApp tasks and runs them in this process."""

    runtime_api_address: str
    poll_interval: float = 0.05
    fab_hash: str | None = None
    app: ClientApp | None = None
    tasks_run: int = 0

    def serve_forever(self) -> None:
        client = _client(self.runtime_api_address)
        log.info("Warm ClientApp executor polling %s", self.runtime_api_address)
        try:
            while True:
                res = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                )
                if res.HasField("task") and res.token:
                    fab_hash = res.task.fab_hash or None
                    if self.fab_hash is None or fab_hash in (None, self.fab_hash):
                        self.run_task(res.token)
                    else:
                        self.run_cold(res.token)
                        client.close()
                        self.restart()
                else:
                    time.sleep(self.poll_interval)
        finally:
            client.close()

    def _load(self, run, fab) -> ClientApp:
        """Install and import the app once; later tasks of the same FAB reuse it."""
        if self.app is None:
            t0 = time.monotonic()
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.app = load(run.fab_id, run.fab_version, fab.hash_str)
            self.fab_hash = fab.hash_str
            log.info(
                "Loaded ClientApp of FAB %s in %.1fs (module %s)",
                fab.hash_str[:8],
                time.monotonic() - t0,
                getattr(sys.modules.get("clients.client_app"), "__file__", "?"),
            )
        elif fab.hash_str != self.fab_hash:
            assert self.fab_hash is not None  # set together with self.app
            raise LoadClientAppError(
                f"FAB {fab.hash_str[:8]} differs from the warm one ({self.fab_hash[:8]})"
            )
        return self.app

    def run_task(self, token: str) -> None:
        """What ``flwr-clientapp`` does for one task, minus the process start-up."""
        client = _client(self.runtime_api_address, token)
        heartbeat = HeartbeatSender(_heartbeat_fn(client))
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        t0 = time.monotonic()
        t_pulled = t_ran = t0
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            t_pulled = time.monotonic()
            app = self._load(run, fab)
            reply = app(message=message, context=context)
            t_ran = time.monotonic()
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the same error reply Flower's flwr-clientapp sends
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            if isinstance(ex, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            log.exception("ClientApp raised an exception")
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:
                log.exception("Failed to push the reply message")
            if heartbeat.is_running:
                heartbeat.stop()
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            client.close()
        self.tasks_run += 1
        kind = message.metadata.message_type if message is not None else "?"
        t_end = time.monotonic()
        log.info(
            "Task %d (%s) done in %.2fs: pull %.2fs, app %.2fs, push %.2fs",
            self.tasks_run,
            kind,
            t_end - t0,
            t_pulled - t0,
            max(0.0, t_ran - t_pulled),
            t_end - max(t_ran, t_pulled),
        )

    def run_cold(self, token: str) -> None:
        """A task of another FAB: a fresh ``flwr-clientapp`` process, as Flower runs it."""
        log.warning("Task of a new FAB: running it in a fresh flwr-clientapp process")
        subprocess.run(
            [
                "flwr-clientapp",
                "--runtime-api-address",
                self.runtime_api_address,
                "--token",
                token,
                "--insecure",
            ],
            check=False,
        )

    def restart(self) -> None:
        """Replace this process by a fresh executor (same PID), so that the new FAB's
        code, not the old one's, is imported warm for the next task."""
        log.warning("Restarting the executor to load the new FAB")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(
            sys.executable, [sys.executable, "-m", "mpsl_flwr.ops.warm_clientapp", *sys.argv[1:]]
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpsl_flwr.ops.warm_clientapp", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runtime-api-address", required=True, help="SuperNode Runtime API")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between task polls")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it exits")
    parser.add_argument(
        "--preload",
        nargs="*",
        default=["torch", "timm", "flwr_datasets"],
        help="third-party modules to import before the first task (not the app itself)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        flower_patches.check_sources(flower_patches.WARM_CLIENTAPP)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    flower_patches.apply_from_env()
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    for name in args.preload:
        importlib.import_module(name)
    with contextlib.suppress(KeyboardInterrupt):
        WarmExecutor(args.runtime_api_address, args.poll).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

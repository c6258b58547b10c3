"""One handle on a ``flower-superlink`` this process owns, for ``mpsl-run`` and ``mpsl-deploy``.

Both commands start a private SuperLink on a free port of 127.0.0.1, under a
``FLWR_HOME`` of their own, and drive it with the ``flwr`` CLI; they differ in the mode
(``--simulation`` with virtual nodes, or a deployment that real SuperNodes join), in
TLS, and in a few variables of their own. What they share lives here, once:

* **environment** (:func:`flower_env`): ``FLWR_HOME``, runtime dependency installation
  off (Flower would otherwise re-install the app's dependencies with uv on every run),
  no update check, unbuffered output, this environment's CLIs first on ``PATH`` (the
  SuperLink starts ``flower-superexec``, ``flwr-serverapp`` and ``flwr-simulation`` by
  name), and no stray ``FLWR_LOCAL_*`` that would send the CLI to another SuperLink.
  A simulation SuperLink then sets ``FLWR_LOCAL_*`` to its own ports, which is how
  ``flwr run`` finds its ``:local:`` SuperLink;
* **start and health check** (:meth:`SuperLink.start`): wait for ``/health`` over HTTP
  or HTTPS (trusting our test CA), failing early if the process exits;
* **liveness** (:meth:`SuperLink.check_alive`) and **stop** by process group and PID
  (:class:`~mpsl_flwr.ops.processes.ManagedProcess`); nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mpsl_flwr.ops.certs import TlsFiles
from mpsl_flwr.ops.processes import ManagedProcess, executable, free_port, wait_for

COMPLETED = "finished:completed"
"""``flwr list`` status of a run that completed (its exit code does not tell)."""

LOCAL_PORT_ENV = ("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT")
"""Where ``flwr`` looks for its ``:local:`` SuperLink."""


def flower_env(
    flwr_home: Path,
    settings: Mapping[str, str | None] | None = None,
    bin_dirs: Sequence[Path] = (),
) -> dict[str, str]:
    """Environment of a Flower process (or ``flwr`` command) that we start.

    ``settings`` are set on top (None: unset); ``bin_dirs`` are searched for commands
    before this environment's own, e.g. a wrapper that a SuperLink should start in
    place of Flower's ``flwr-serverapp``.
    """
    env = dict(os.environ)
    for key in LOCAL_PORT_ENV:
        env.pop(key, None)
    path = [*map(str, bin_dirs), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join(path),
    )
    for key, value in (settings or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class FlwrCli:
    """Runs ``flwr`` CLI commands under ``env``, against connection ``connection``.

    ``connection`` is the name of a SuperLink connection in ``$FLWR_HOME/config.toml``;
    None means the default one (for a simulation :class:`SuperLink`, the ``:local:``
    SuperLink that ``FLWR_LOCAL_*`` in ``env`` point at).
    """

    env: dict[str, str]
    connection: str | None = None

    def conn_args(self) -> list[str]:
        return [self.connection] if self.connection else []

    def flwr(self, *args: str, capture: bool = True, timeout: float | None = 120) -> str:
        """Run a ``flwr`` CLI command; returns its stdout."""
        out = subprocess.run(
            [executable("flwr"), *args],
            env=self.env,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`flwr {' '.join(args)}` failed: {out.stdout}{out.stderr}")
        return out.stdout

    def run_status(self, run_id: int) -> str:
        data = json.loads(
            self.flwr("list", *self.conn_args(), "--run-id", str(run_id), "--format", "json")
        )
        return str(data["runs"][0]["status"])

    def check_alive(self) -> None:
        """Raise if a process this run needs has died (a no-op unless overridden)."""


@dataclass
class SuperLink(FlwrCli):
    """A ``flower-superlink`` that this process starts, on free ports of 127.0.0.1.

    ``simulation``: ``--simulation`` (virtual nodes; the ``flwr`` CLI reaches it as
    ``:local:``) on ports ``port`` and ``control_port``; otherwise a deployment that
    SuperNodes join on ``port``, with TLS when ``tls`` is given and SuperNode
    authentication when ``auth``. ``settings`` and ``bin_dirs`` extend the environment
    (:func:`flower_env`) of the SuperLink, of what it starts and of the ``flwr`` CLI.
    """

    flwr_home: Path
    simulation: bool = False
    port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    auth: bool = False
    settings: dict[str, str | None] = field(default_factory=dict)
    bin_dirs: tuple[Path, ...] = ()
    log_path: Path | None = None
    process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:  # type: ignore[override]
        """Environment of the SuperLink, its helpers and the ``flwr`` CLI against it."""
        settings: dict[str, str | None] = {}
        if self.simulation:
            http_port_env, control_port_env = LOCAL_PORT_ENV
            settings[http_port_env] = str(self.port)
            settings[control_port_env] = str(self.control_port)
            settings["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
        return flower_env(self.flwr_home, {**settings, **self.settings}, self.bin_dirs)

    def tls_args(self, client: bool) -> list[str]:
        """TLS flags of the SuperLink (``client=False``) or of a SuperNode joining it."""
        if self.tls is None:
            return ["--insecure"]
        if client:
            return ["--root-certificates", str(self.tls.ca_cert)]
        return [
            "--ssl-ca-certfile",
            str(self.tls.ca_cert),
            "--ssl-certfile",
            str(self.tls.server_cert),
            "--ssl-keyfile",
            str(self.tls.server_key),
        ]

    def command(self) -> list[str]:
        cmd = [executable("flower-superlink"), *self.tls_args(client=False)]
        if self.simulation:
            cmd.append("--simulation")
        cmd += ["--isolation", "subprocess"]
        if self.simulation:
            cmd += ["--control-api-address", f"127.0.0.1:{self.control_port}"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        cmd.append("--disable-runtime-dependency-installation")
        if self.auth:
            cmd.append("--enable-supernode-auth")
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it answers on ``/health``; stop it if it does not."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.flwr_home / "superlink.log"
        self.process = ManagedProcess(
            "flower-superlink", self.command(), self.env, self.log_path
        ).start()
        try:
            wait_for(
                self.healthy,
                timeout,
                f"the SuperLink to answer on {self.health_url()}",
                watch=[self.process],
            )
        except BaseException:
            self.stop()
            raise

    def health_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}/health"

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None
        try:
            with urllib.request.urlopen(self.health_url(), timeout=0.5, context=context) as resp:
                return resp.status == 200
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.process is not None:
            self.process.check_alive()

    def remember_children(self) -> None:
        """Note its helpers now alive (SuperExec, ServerApp), so that :meth:`stop` can
        reach those that left its process group."""
        if self.process is not None:
            self.process.remember_children()

    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperLink and everything in its process group, by PID."""
        if self.process is not None:
            self.process.stop(grace)

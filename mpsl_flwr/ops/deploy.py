"""Run the app on a real Flower deployment on loopback: one SuperLink, N SuperNodes.

Unlike :mod:`mpsl_flwr.ops.launch` (a simulation SuperLink with virtual nodes), this starts
a ``flower-superlink`` in deployment mode and ``N`` separate ``flower-supernode``
processes, each with its ``partition-id``/``num-partitions`` node config, all on free
ports of 127.0.0.1 and each under its own ``FLWR_HOME``. It writes a SuperLink
connection named ``mpsl-deploy`` into the CLI's ``$FLWR_HOME/config.toml``, submits the
app with ``flwr run <app> mpsl-deploy``, waits for ``finished:completed`` through
``flwr list``, prints where ``summary.json`` is, and stops every process it started by
process group and PID, also on failure or Ctrl-C.

Variants (see docs/deployment.md):

* insecure (default): plain HTTP on loopback;
* ``--tls``: a throw-away test CA and server certificate (SAN 127.0.0.1, localhost);
  the SuperLink serves HTTPS, SuperNodes and the CLI trust that CA;
* ``--auth`` (implies ``--tls``; Flower requires it): ``--enable-supernode-auth`` on
  the SuperLink; every SuperNode gets an ECDSA P-384 key whose public half is
  registered with ``flwr supernode register`` before the node starts. Unregistered
  nodes are refused. Each run gets a node-key registry (``<workdir>/node-registry.json``,
  run-config ``node-registry``): the ServerApp binds each client id only to the node
  whose key was registered for that partition.

With ``--tls`` the SuperLink listens on 127.0.0.1 only and SuperNodes reach it through
an nginx reverse proxy (:mod:`mpsl_flwr.ops.proxy`) that forwards the Fleet routes and
nothing else; the ``flwr`` CLI (Control API) talks to the loopback SuperLink directly.
``--direct`` skips the proxy (SuperNodes dial the SuperLink), for comparison only.

    mpsl-deploy --nodes 2 --tls --auth --run-config "epochs=1 synthetic-train-size=64"

The SuperLink is the :class:`mpsl_flwr.ops.superlink.SuperLink` that ``mpsl-run`` uses
too, in deployment mode; the command line is :func:`mpsl_flwr.cli.deploy`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mpsl_flwr.config import resolve_config
from mpsl_flwr.node_registry import NodeRegistry, RegisteredNode, clients_of_partition
from mpsl_flwr.ops import fast_flower, flower_patches
from mpsl_flwr.ops.certs import NodeKey, TlsFiles, make_node_key, make_tls
from mpsl_flwr.ops.launch import flwr_run, report
from mpsl_flwr.ops.processes import (
    ManagedProcess,
    executable,
    free_port,
    owned_temp_dir,
    sigterm_raises_exit,
    wait_for,
)
from mpsl_flwr.ops.proxy import FleetProxy
from mpsl_flwr.ops.runs import RunOutcome, keep_logs
from mpsl_flwr.ops.superlink import FlwrCli, SuperLink, flower_env
from mpsl_flwr.preflight import preflight
from mpsl_flwr.project import PROJECT_DIR

CONNECTION = "mpsl-deploy"

FAST: dict[str, Any] = {"warm_clientapp": True, "node_poll": 0.2, "object_pull_backoff": 0.02}
"""``mpsl-deploy --fast``: the three latency cuts of docs/deployment.md, as DeployOptions."""

SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
"""Seconds between a SuperExec's polls for a new task (Flower default 1.0)."""


@dataclass
class DeployOptions:
    """What to start. ``auth`` needs ``tls`` (Flower refuses node auth over plain HTTP)."""

    nodes: int = 2
    tls: bool = False
    auth: bool = False
    workdir: Path | None = None
    superexec_poll_interval: float | None = 0.1
    """Seconds between task polls of each SuperExec (None: Flower's 1.0 s)."""
    warm_clientapp: bool = False
    node_poll: float | None = None
    """Cap of the SuperNode idle poll (opt-in Flower patch; None: Flower's 3 s)."""
    object_pull_backoff: float | None = None
    """First retry of a payload still uploading (opt-in Flower patch; None: Flower's 1 s)."""
    startup_timeout: float = 60.0
    proxy: bool | None = None
    """SuperNodes reach the SuperLink only through the Fleet proxy (None: with TLS)."""
    proxy_host: str = "127.0.0.1"
    """Where the proxy listens (0.0.0.0 for SuperNodes on other hosts)."""
    public_names: tuple[str, ...] = ()
    """Extra names or IPs in the server certificate (how remote SuperNodes dial it)."""
    proxy_max_body_mb: float = 1024.0

    @property
    def use_proxy(self) -> bool:
        return self.tls if self.proxy is None else self.proxy

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1; got {self.nodes}.")
        if self.auth and not self.tls:
            raise ValueError(
                "SuperNode authentication needs TLS: Flower's SuperLink refuses "
                "--enable-supernode-auth with --insecure. Add --tls."
            )


@dataclass
class SuperNode:
    """A ``flower-supernode`` we started, and what it was started with."""

    partition_id: int
    num_partitions: int
    process: ManagedProcess
    key: NodeKey | None = None
    executor: ManagedProcess | None = None
    required: bool = True
    """False for a node expected to fail (e.g. an unregistered one in a test)."""


@dataclass
class Deployment(FlwrCli):
    """A SuperLink (:attr:`link`) and its SuperNodes on loopback, owned by this process;
    its ``flwr`` commands go to connection ``mpsl-deploy`` in the SuperLink's FLWR_HOME."""

    options: DeployOptions
    workdir: Path
    connection: str | None = CONNECTION
    supernodes: list[SuperNode] = field(default_factory=list)
    registered: dict[int, tuple[NodeKey, int]] = field(default_factory=dict)
    """Node ids the SuperLink gave our registered keys: the key and its partition id."""
    link: SuperLink = field(init=False)
    proxy: FleetProxy | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.link = SuperLink(
            self.cli_home,
            auth=self.options.auth,
            settings=self._settings(),
            bin_dirs=(self.wrapper_dir,) if self.options.object_pull_backoff is not None else (),
            log_path=self.workdir / "logs" / "superlink.log",
        )

    # ------------------------------------------------------------------ env
    @property
    def cli_home(self) -> Path:
        """FLWR_HOME of the SuperLink and of the ``flwr`` CLI (holds config.toml)."""
        return self.workdir / "superlink"

    @property
    def wrapper_dir(self) -> Path:
        """Where the patched ``flwr-serverapp`` goes (first on the SuperLink's PATH)."""
        return self.workdir / "bin"

    @property
    def port(self) -> int:
        return self.link.port

    @property
    def address(self) -> str:
        """The SuperLink on loopback: where the ``flwr`` CLI (Control API) goes."""
        return self.link.address

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes connect: the proxy, or the SuperLink itself with ``--direct``."""
        return self.proxy.address if self.proxy is not None else self.address

    @property
    def tls(self) -> TlsFiles | None:
        return self.link.tls

    @tls.setter
    def tls(self, files: TlsFiles | None) -> None:
        self.link.tls = files

    @property
    def superlink(self) -> ManagedProcess | None:
        """The ``flower-superlink`` process, once started."""
        return self.link.process

    def _settings(self) -> dict[str, str | None]:
        """What this deployment's processes add to :func:`flower_env` (None: unset)."""
        backoff = self.options.object_pull_backoff
        poll = self.options.superexec_poll_interval
        return {
            flower_patches.SUPERNODE_POLL_ENV: None,  # per SuperNode, see start_supernode
            flower_patches.OBJECT_PULL_BACKOFF_ENV: None if backoff is None else str(backoff),
            SUPEREXEC_POLL_ENV: None if poll is None else str(poll),
            # Our helper entry points (mpsl_flwr.ops.warm_clientapp, .fast_flower).
            "PYTHONPATH": fast_flower.checkout_pythonpath(),
        }

    @property
    def env(self) -> dict[str, str]:  # type: ignore[override]
        """Environment of the ``flwr`` CLI commands run against this deployment."""
        return self.link.env

    # ------------------------------------------------------------------ superlink
    def start_superlink(self) -> None:
        """The SuperLink on loopback, its CLI connection, and the Fleet proxy if asked."""
        if self.options.tls:
            hosts = ("127.0.0.1", "localhost", *self.options.public_names)
            self.tls = make_tls(self.workdir / "tls", tuple(dict.fromkeys(hosts)))
        if self.options.object_pull_backoff is not None:
            fast_flower.write_wrapper(self.wrapper_dir, "flwr-serverapp")
        if self.options.use_proxy:
            self.proxy = FleetProxy(
                self.workdir / "proxy",
                self.port,
                self.tls,
                listen_host=self.options.proxy_host,
                max_body_mb=self.options.proxy_max_body_mb,
            )
        self.link.start(self.options.startup_timeout)
        self.write_connection()
        if self.proxy is not None:
            self.proxy.start(self.options.startup_timeout)

    def write_connection(self) -> Path:
        """Write the CLI's config.toml (Flower 1.41 format) with our connection as default.

        ``cli_home`` is private to this deployment, so the file is written whole (a
        reused ``--workdir`` gets the new port, not a duplicate table).
        """
        path = self.cli_home / "config.toml"
        lines = [
            "[superlink]",
            f'default = "{self.connection}"',
            "",
            f"[superlink.{self.connection}]",
            f'address = "{self.address}"',
        ]
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls.ca_cert.resolve()}"')
        path.write_text("\n".join(lines) + "\n")
        return path

    # ------------------------------------------------------------------ supernodes
    def node_key(self, partition_id: int, register: bool = True) -> NodeKey:
        """A fresh key pair for a node; registered with the SuperLink unless told not."""
        keys, name, k = self.workdir / "keys", f"node-p{partition_id}", 1
        while (keys / name).exists():  # a key per node, never overwritten
            k += 1
            name = f"node-p{partition_id}-{k}"
        key = make_node_key(keys, name)
        if register:
            out = self.flwr(
                "supernode",
                "register",
                str(key.public_key),
                *self.conn_args(),
                "--name",
                f"partition-{partition_id}",
                "--format",
                "json",
            )
            self.registered[int(_json_of(out)["node-id"])] = (key, partition_id)
        return key

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int | None = None,
        key: NodeKey | Literal["registered", "none"] = "registered",
        max_retries: int | None = None,
        required: bool = True,
    ) -> SuperNode:
        """Start one SuperNode serving ``partition_id`` of ``num_partitions``.

        ``key="registered"``: with ``auth``, a fresh key registered with the SuperLink
        (none without ``auth``); ``"none"``: no key at all; or a given :class:`NodeKey`
        (e.g. an unregistered one, to see the SuperLink refuse the node).
        ``required=False`` marks a node that may die without failing the run.
        """
        num_partitions = num_partitions or self.options.nodes
        if key == "registered":
            key = self.node_key(partition_id) if self.options.auth else "none"
        name = f"supernode-{len(self.supernodes)}-p{partition_id}"
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        runtime_port = free_port()
        warm = self.options.warm_clientapp
        env = flower_env(home, self._settings())
        if self.options.node_poll is None and self.options.object_pull_backoff is None:
            supernode = [executable("flower-supernode")]
        else:  # Flower's flower-supernode, with the patches env asks for
            supernode = [sys.executable, "-m", "mpsl_flwr.ops.fast_flower", "flower-supernode"]
        if self.options.node_poll is not None:
            env[flower_patches.SUPERNODE_POLL_ENV] = str(self.options.node_poll)
        cmd = [
            *supernode,
            *self.link.tls_args(client=True),
            "--superlink",
            self.fleet_address,
            "--host",
            "127.0.0.1",
            "--port",
            str(runtime_port),
            "--node-config",
            f"partition-id={partition_id} num-partitions={num_partitions}",
            "--isolation",
            "process" if warm else "subprocess",
        ]
        node_key = key if isinstance(key, NodeKey) else None
        if node_key is not None:
            cmd += ["--auth-supernode-private-key", str(node_key.private_key)]
        if max_retries is not None:
            cmd += ["--max-retries", str(max_retries)]
        logs = self.workdir / "logs"
        node = SuperNode(
            partition_id,
            num_partitions,
            ManagedProcess(f"flower-supernode {name}", cmd, env, logs / f"{name}.log").start(),
            node_key,
            required=required,
        )
        self.supernodes.append(node)
        if warm:
            executor_cmd = [
                sys.executable,
                "-m",
                "mpsl_flwr.ops.warm_clientapp",
                "--runtime-api-address",
                f"127.0.0.1:{runtime_port}",
                "--parent-pid",
                str(node.process.pid),
                "--poll",
                str(self.options.superexec_poll_interval or 0.1),
            ]
            node.executor = ManagedProcess(
                f"warm ClientApp executor of {name}", executor_cmd, env, logs / f"{name}-app.log"
            ).start()
        return node

    def online_nodes(self) -> list[dict[str, Any]]:
        """SuperNodes the SuperLink lists as online (``flwr supernode list``)."""
        data = json.loads(self.flwr("supernode", "list", *self.conn_args(), "--format", "json"))
        return [n for n in data.get("nodes", []) if n.get("status") == "online"]

    def wait_for_nodes(self, count: int) -> None:
        """Wait until ``count`` SuperNodes are online; fail if one of ours exits."""
        wait_for(
            lambda: len(self.online_nodes()) >= count,
            self.options.startup_timeout,
            f"{count} SuperNode(s) to connect to the SuperLink at {self.fleet_address} "
            f"(see the logs in {self.workdir / 'logs'})",
            watch=self._required(),
            interval=0.5,
        )

    def _required(self) -> list[ManagedProcess]:
        """The processes a run needs: the SuperLink, the proxy, required SuperNodes, their
        executors."""
        procs = [p for p in (self.superlink, self._proxy_process()) if p is not None]
        for node in self.supernodes:
            if node.required:
                procs += [p for p in (node.process, node.executor) if p is not None]
        return procs

    def check_alive(self) -> None:
        for proc in self._required():
            proc.check_alive()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """SuperLink, connection, keys, then all SuperNodes; returns once all are online."""
        self.start_superlink()
        for pid in range(self.options.nodes):
            self.start_supernode(pid)
        self.wait_for_nodes(self.options.nodes)

    def remember_children(self) -> None:
        """Note every helper process now alive, so that :meth:`stop` can reach it."""
        for proc in self._processes():
            proc.remember_children()

    def stop(self) -> None:
        """Stop SuperNodes, then the SuperLink, by process group and PID."""
        for proc in self._processes():
            with contextlib.suppress(Exception):
                proc.stop()

    def _processes(self) -> list[ManagedProcess]:
        procs = [p for n in self.supernodes for p in (n.executor, n.process) if p is not None]
        return procs + [p for p in (self._proxy_process(), self.superlink) if p is not None]

    def _proxy_process(self) -> ManagedProcess | None:
        return self.proxy.process if self.proxy is not None else None

    # ------------------------------------------------------------------ runs
    def write_registry(self, clients_per_node: int) -> Path:
        """``node-registry.json``: each registered node id, its key, and the client ids its
        partition serves (what the ServerApp's identity binding admits)."""
        nodes = {
            node_id: RegisteredNode(
                node_id,
                tuple(clients_of_partition(pid, clients_per_node)),
                public_key=key.public_key.read_text().strip(),
                partition_id=pid,
            )
            for node_id, (key, pid) in self.registered.items()
        }
        return NodeRegistry(nodes).write(self.workdir / "node-registry.json")

    def run(
        self, run_config: dict[str, Any], app_dir: Path = PROJECT_DIR, **kwargs: Any
    ) -> RunOutcome:
        """Submit the app with ``run_config`` overrides; wait for its end. With node auth,
        the run gets this deployment's node registry unless ``node-registry`` is given."""
        if self.options.auth and "node-registry" not in run_config:
            k = resolve_config(run_config, app_dir).clients_per_node
            run_config = {**run_config, "node-registry": str(self.write_registry(k))}
        return flwr_run(self, run_config, None, app_dir=app_dir, **kwargs)


def _json_of(out: str) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed (after any status line)."""
    start = out.find("\n{") + 1 if not out.startswith("{") else 0
    try:
        return dict(json.JSONDecoder().raw_decode(out[start:])[0])
    except ValueError as err:
        raise RuntimeError(f"Expected JSON from the flwr CLI, got: {out.strip()[:200]}") from err


WORKDIR_PREFIX = "mpsl-deploy-"
"""Temporary work dirs of ``mpsl-deploy``; an orphaned one is removed at the next start."""


@contextlib.contextmanager
def deployment(
    options: DeployOptions,
    keep_workdir: bool = False,
    after_stop: Callable[[Deployment], None] | None = None,
) -> Iterator[Deployment]:
    """A running deployment for the ``with`` block; everything stops on exit.

    ``after_stop`` runs once every process has stopped (their logs are complete) and
    before a temporary work dir is removed.
    """
    with contextlib.ExitStack() as stack:
        workdir = options.workdir or stack.enter_context(
            owned_temp_dir(WORKDIR_PREFIX, keep=keep_workdir)
        )
        workdir.mkdir(parents=True, exist_ok=True)
        dep = Deployment(options, workdir.resolve())
        with sigterm_raises_exit():
            try:
                dep.start()
                yield dep
            finally:
                dep.stop()
                if after_stop is not None:
                    after_stop(dep)


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so that every process gets stopped
    (also when started in the background, where a shell leaves SIGINT ignored)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(
    options: DeployOptions,
    overrides: dict[str, Any],
    app_dir: Path = PROJECT_DIR,
    timeout: float = 3600.0,
    keep_workdir: bool = False,
) -> int:
    """``mpsl-deploy`` (arguments parsed by :func:`mpsl_flwr.cli.deploy`): the exit code."""
    cfg = resolve_config(overrides, app_dir)
    preflight(cfg, options.nodes * cfg.clients_per_node)  # fail fast, before any process
    options.proxy_max_body_mb = max(options.proxy_max_body_mb, 2 * cfg.max_client_mb)
    _interrupt_on_signals()
    outcomes: list[RunOutcome] = []
    logs: list[Path] = []

    def save_logs(dep: Deployment) -> None:
        if outcomes:
            logs.append(keep_logs([dep.workdir / "logs"], outcomes[0].run_dir))

    try:
        with deployment(options, keep_workdir, save_logs) as dep:
            kind = "TLS + node auth" if options.auth else "TLS" if options.tls else "insecure"
            fleet = f"; Fleet proxy (nginx) on {dep.fleet_address}" if dep.proxy else ""
            print(
                f"SuperLink on {dep.address} ({kind}){fleet}; {options.nodes} SuperNodes "
                f"online; connection '{CONNECTION}' in {dep.cli_home / 'config.toml'}",
                flush=True,
            )
            outcomes.append(dep.run(overrides, app_dir=app_dir, timeout=timeout))
    except KeyboardInterrupt as err:
        print(f"\nInterrupted ({err}); the run was stopped and every process ended.")
        return 130
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        print(f"\nmpsl-deploy failed: {err}", file=sys.stderr)
        return 1
    return report(outcomes[0], f"see the logs in {logs[0]}")

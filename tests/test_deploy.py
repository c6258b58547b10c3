"""Deployment on loopback: certificates, the CLI connection, the Fleet proxy, and a real
TLS + auth run.

The unit tests need no Flower process (the proxy tests start nginx in front of a stub).
The ``e2e`` test starts the default secure layout: a real ``flower-superlink`` with TLS
and SuperNode authentication on 127.0.0.1, nginx in front of it forwarding the Fleet
routes only, two registered ``flower-supernode`` processes that dial the proxy, and
intruders that must be refused: SuperNodes with an unregistered key or none, and a
process holding only the CA certificate and the proxy's address that tries
``flwr supernode register``, ``flwr run`` and plain HTTPS to Control and runtime routes.
Then it runs one MPSL step end to end with the node-key registry and checks
``finished:completed`` and summary.json. It uses the latency cuts of ``mpsl-deploy
--fast`` (warm ClientApp executor, short node poll and object-pull back-off) to stay
under a minute on 2 cores;
the stock Flower path is the same code with them off (``mpsl-deploy --tls --auth``).

    pytest -m e2e tests/test_deploy.py
"""

from __future__ import annotations

import ipaddress
import json
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from mpsl_flwr.node_registry import NodeRegistry
from mpsl_flwr.ops import fast_flower, flower_patches
from mpsl_flwr.ops.certs import make_node_key, make_tls
from mpsl_flwr.ops.deploy import CONNECTION, FAST, Deployment, DeployOptions, deployment
from mpsl_flwr.ops.processes import children_of, pid_alive
from mpsl_flwr.ops.proxy import FLEET_ROUTES, FleetProxy, nginx_executable
from mpsl_flwr.ops.superlink import COMPLETED, FlwrCli, flower_env
from mpsl_flwr.project import PROJECT_DIR

# One MPSL step: 2 clients hold at most 32 samples each; b_n = ceil(64 / 2) = 32.
TINY_RUN = {
    "epochs": 1,
    "synthetic-train-size": 32,
    "synthetic-test-size": 16,
    "encoder-depth": 2,
    "batch-size": 64,
    "eval-batch-size": 64,
    "progress": False,
    "node-wait-timeout": 60.0,
    "step-timeout": 60.0,
}


# ---------------------------------------------------------------------- unit
def test_tls_files_trust_chain_and_sans(tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_node_key_is_openssh_p384(tmp_path: Path) -> None:
    key = make_node_key(tmp_path, "node-0")
    private = load_ssh_private_key(key.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert key.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600


def test_auth_requires_tls() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        DeployOptions(auth=True, tls=False)


@pytest.mark.parametrize("tls", [False, True])
def test_connection_is_what_flwr_reads(tmp_path: Path, monkeypatch, tls: bool) -> None:
    """The config.toml we write parses with Flower's own reader, as the default."""
    from flwr.cli.flower_config import read_superlink_connection

    dep = Deployment(DeployOptions(tls=tls), tmp_path)
    if tls:
        dep.tls = make_tls(tmp_path / "tls")
    dep.cli_home.mkdir(parents=True)
    dep.write_connection()
    monkeypatch.setenv("FLWR_HOME", str(dep.cli_home))
    for name in (CONNECTION, None):  # by name, and as the default
        conn = read_superlink_connection(name)
        assert conn.name == CONNECTION
        assert conn.address == f"127.0.0.1:{dep.port}"
        assert conn.insecure is (not tls)
        assert conn.root_certificates == (str(dep.tls.ca_cert) if tls else None)


def test_fast_serverapp_wrapper_is_what_the_superlink_starts(tmp_path: Path) -> None:
    """With the object-pull back-off, the SuperLink (and the SuperExec it starts) finds
    our flwr-serverapp wrapper first on PATH; without it, Flower's own."""
    import shutil
    import subprocess

    dep = Deployment(DeployOptions(object_pull_backoff=0.02), tmp_path)
    wrapper = fast_flower.write_wrapper(dep.wrapper_dir)
    env = dep.link.env
    assert shutil.which("flwr-serverapp", path=env["PATH"]) == str(wrapper)
    assert env[flower_patches.OBJECT_PULL_BACKOFF_ENV] == "0.02"
    done = subprocess.run([wrapper, "--help"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "flwr-serverapp" in done.stdout, done.stderr
    stock = Deployment(DeployOptions(), tmp_path / "stock").link.env
    assert shutil.which("flwr-serverapp", path=stock["PATH"]) != str(wrapper)
    assert flower_patches.OBJECT_PULL_BACKOFF_ENV not in stock


def test_fast_flower_patches_then_hands_over_without_mpsl_flwr(tmp_path: Path) -> None:
    """The wrapped entry point runs with the back-off patched, under Flower's own name,
    and with no mpsl_flwr module left to shadow the app's (Flower imports it from the
    FAB)."""
    import os
    import subprocess
    import sys
    import textwrap

    (tmp_path / "probe.py").write_text(
        textwrap.dedent(
            """
            import sys
            from flwr.supercore.inflatable import inflatable_utils as u

            def main():
                print(u.pull_objects.__kwdefaults__["initial_backoff"], sys.argv[0],
                      any(m.split(".")[0] == "mpsl_flwr" for m in sys.modules))
            """
        )
    )
    code = (
        "from mpsl_flwr.ops import fast_flower\n"
        "fast_flower.ENTRY_POINTS['flwr-serverapp'] = 'probe:main'\n"
        "fast_flower.main(['flwr-serverapp', '--x'])\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        flower_patches.OBJECT_PULL_BACKOFF_ENV: "0.02",
        "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.02", "flwr-serverapp", "False"]


# ---------------------------------------------------------------------- the Fleet proxy
def _require_nginx() -> None:
    """Fail (not skip) with how to install nginx: the secure layout depends on it."""
    try:
        nginx_executable()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)


def test_the_proxy_forwards_what_a_supernode_calls_and_nothing_else() -> None:
    """FLEET_ROUTES are exactly the paths Flower's SuperNode client requests."""
    import inspect
    import re

    from flwr.supernode import fleet_http_client

    called = re.findall(r'path="(/v1/[^"]+)"', inspect.getsource(fleet_http_client))
    assert sorted(called) == sorted(FLEET_ROUTES)


def _superlink_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of Flower's SuperLink app (docs and health too)."""
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app

    routes = []
    for context in iter_route_contexts(create_app().routes):
        route = context.route
        routes += [(m, route.path) for m in getattr(route, "methods", ()) if m != "HEAD"]
    return routes


def test_nginx_forwards_only_the_fleet_routes_of_the_superlink_app(tmp_path: Path) -> None:
    """nginx with our config in front of a stub upstream: of every route the SuperLink app
    serves, exactly the Fleet routes (by POST) reach it; the rest answer 403/404."""
    import http.server
    import threading

    _require_nginx()
    seen: list[tuple[str, str]] = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = _answer  # noqa: N815 (the names http.server calls)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = FleetProxy(tmp_path / "proxy", server.server_address[1], tls=None)
    try:
        proxy.start(timeout=20)
        statuses = {
            (m, path): proxy.status_of(path, m, b"x" if m == "POST" else None)
            for m, path in [*_superlink_routes(), ("GET", FLEET_ROUTES[0])]
        }
        # Spellings that normalise to a Control route must not slip through either.
        for path in ("/v1/fleet/../control/list-nodes", "/v1/fleet/%2e%2e/control/start-run"):
            statuses["POST", path] = proxy.status_of(path, "POST", b"x")
    finally:
        proxy.stop()
        server.shutdown()
    forwarded = {k for k, code in statuses.items() if code == 200}
    assert forwarded == {("POST", r) for r in FLEET_ROUTES}
    assert sorted(seen) == sorted(forwarded)
    refused = {k: code for k, code in statuses.items() if k not in forwarded}
    assert set(refused.values()) <= {403, 404}, refused
    assert not proxy.process.running()


def _foreign_cli(tmp_path: Path, dep: Deployment) -> FlwrCli:
    """A ``flwr`` CLI that holds only the deployment's CA certificate and public address."""
    home = tmp_path / "foreign"
    home.mkdir()
    ca = home / "ca.pem"
    ca.write_bytes(dep.tls.ca_cert.read_bytes())
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "there"\n\n[superlink.there]\n'
        f'address = "{dep.fleet_address}"\nroot-certificates = "{ca}"\n'
    )
    cli = FlwrCli()
    cli.env, cli.connection = flower_env(home), "there"
    return cli


# ---------------------------------------------------------------------- e2e
def _wait_exit(proc, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc.returncode()


@pytest.mark.e2e
def test_tls_auth_deployment_runs_mpsl_and_refuses_unregistered_nodes(tmp_path: Path) -> None:
    _require_nginx()
    options = DeployOptions(
        nodes=2,
        tls=True,
        auth=True,
        workdir=tmp_path / "deploy",
        **FAST,
    )
    with deployment(options) as dep:
        registered = {n["node-id"] for n in dep.online_nodes()}
        assert len(registered) == 2
        # The secure layout: SuperNodes came in through the proxy, Control is on loopback.
        assert dep.proxy is not None and dep.fleet_address != dep.address
        assert {str(n) for n in dep.registered} == registered

        # A process with only the CA certificate and the public address: Control refused.
        foreign = _foreign_cli(tmp_path, dep)
        own_key = make_node_key(tmp_path / "foreign", "mine")
        with pytest.raises(RuntimeError, match="403 Forbidden"):
            foreign.flwr("supernode", "register", str(own_key.public_key), "there")
        # (Plain output: with --format json, `flwr run` exits 0 even when refused.)
        with pytest.raises(RuntimeError, match="403 Forbidden"):
            foreign.flwr("run", str(PROJECT_DIR), "there")
        with pytest.raises(RuntimeError, match="403 Forbidden"):
            foreign.flwr("supernode", "list", "there")
        for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-nodes"):
            assert dep.proxy.status_of(path, "POST", b"") == 403, path
        for path in ("/docs", "/openapi.json", "/health"):
            assert dep.proxy.status_of(path) == 404, path

        # Intruders: the same partition, but a key the SuperLink never saw, or no key.
        stranger = dep.start_supernode(
            0, key=dep.node_key(100, register=False), max_retries=0, required=False
        )
        anonymous = dep.start_supernode(0, key="none", max_retries=0, required=False)
        for intruder in (stranger, anonymous):
            code = _wait_exit(intruder.process, timeout=60)
            assert code not in (None, 0), f"{intruder.process.name} was not refused"
        # Flower's words (exit code 305): activation of an unknown key fails; an
        # anonymous node may not self-register while node auth is on.
        assert "[code: 2004] Failed to activate SuperNode" in stranger.process.log_path.read_text()
        assert "must be registered via the CLI" in anonymous.process.log_path.read_text()
        assert {n["node-id"] for n in dep.online_nodes()} == registered

        outcome = dep.run({**TINY_RUN, "output-dir": str(tmp_path / "out")}, stream=False)
        assert outcome.status == COMPLETED, (
            f"run ended {outcome.status}; SuperLink log:\n{dep.superlink.log_tail(40)}"
        )
        summary = json.loads((outcome.run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["num-clients"] == 2
        assert summary["history"][0]["steps"] >= 1
        assert summary["history"][0]["samples-trained"] == 32
        # The run bound its clients through the node-key registry mpsl-deploy wrote.
        registry = NodeRegistry.load(dep.workdir / "node-registry.json")
        assert {str(n) for n in registry.nodes} == registered
        assert sorted(n.clients for n in registry.nodes.values()) == [(0,), (1,)]
        assert summary["config"]["node-registry"] == str(dep.workdir / "node-registry.json")
        started = [p for n in dep.supernodes for p in (n.process, n.executor) if p]
        started += [dep.superlink, dep.proxy.process]
        dep.remember_children()
        helpers = {c for p in started if p.running() for c in children_of(p.pid)}
    for proc in started:
        assert not proc.running(), f"{proc.name} still running after stop"
    alive = [pid for pid in helpers if pid_alive(pid)]
    assert not alive, f"helper processes left running: {alive}"

"""The reverse proxy that lets SuperNodes in and keeps everyone else out of the SuperLink.

Flower 1.41's ``flower-superlink`` is one FastAPI app that serves the Fleet API
(``/v1/fleet/...``, what SuperNodes call), the Control API (``/v1/control/...``, what the
``flwr`` CLI calls: register node keys, start runs), the runtime API (``/v1/runtime/...``,
for the ServerApp and SuperExec) and ``/health``, ``/docs``, ``/openapi.json`` on one port;
and the open-source build authenticates Control callers with a no-op plugin. So whoever
reaches the Fleet port could register their own SuperNode key and ``flwr run`` their own
app, whose ClientApp then runs on every SuperNode.

``mpsl-deploy`` therefore binds the SuperLink to 127.0.0.1 and puts nginx (Debian's
package, an established component rather than a home-made filter) in front of it. The
proxy terminates TLS with the deployment's certificate and forwards exactly the twelve
Fleet routes that Flower's SuperNode calls (:data:`FLEET_ROUTES`, the paths of
``flwr.supernode.fleet_http_client.FleetHttpClient``), by POST, each to its own canonical
path on the SuperLink. Every other ``/v1/`` path answers 403 and everything else 404, at
the proxy. Control stays on loopback for the operator's ``flwr`` CLI.

nginx runs as a process of ours like every other (:class:`FleetProxy`): its prefix,
config, pid file, logs and temp dirs are under the deployment's work dir, ``daemon off``,
stopped by PID; nothing is written to /etc or /var.
"""

from __future__ import annotations

import shutil
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mpsl_flwr.ops.certs import TlsFiles
from mpsl_flwr.ops.processes import ManagedProcess, free_port, wait_for

FLEET_ROUTES: tuple[str, ...] = tuple(
    f"/v1/fleet/{name}"
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
"""Every path a Flower 1.41 SuperNode requests (all POST); nothing else is forwarded."""

INSTALL_HINT = (
    "install it with: apt-get install -y --no-install-recommends nginx (or make system-deps)"
)


def nginx_executable() -> str:
    """Path of ``nginx`` (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError(f"nginx is not installed; {INSTALL_HINT}")
    return found


@dataclass(frozen=True)
class ProxySite:
    """What the proxy listens on and where it forwards to."""

    listen_host: str
    listen_port: int
    upstream_port: int
    """The SuperLink's port on 127.0.0.1."""
    tls: TlsFiles | None
    """The deployment's CA and server certificate: served to SuperNodes, and trusted
    for the hop to the SuperLink (which keeps TLS: Flower refuses node auth without)."""
    max_body_mb: float = 1024.0
    """Largest request body passed on. A SuperNode uploads one object (one array) per
    ``push-object``, at most ``max-client-mb`` (256 MB by default)."""
    timeout_s: float = 300.0
    """Read/send timeout of a forwarded request (Fleet calls are unary; generous)."""

    def render(self, prefix: Path) -> str:
        """The whole ``nginx.conf``, with every path under ``prefix``."""
        scheme = "https" if self.tls else "http"
        routes = "|".join(r.removeprefix("/v1/fleet/") for r in FLEET_ROUTES)
        listen = f"{self.listen_host}:{self.listen_port}" + (" ssl" if self.tls else "")
        tls_lines = ""
        if self.tls is not None:
            tls_lines = f"""
        ssl_certificate {self.tls.server_cert.resolve()};
        ssl_certificate_key {self.tls.server_key.resolve()};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_trusted_certificate {self.tls.ca_cert.resolve()};
        proxy_ssl_verify on;
        # The SuperLink's certificate names 127.0.0.1 as an IP SAN, which nginx's name
        # check does not read; its DNS SAN localhost is what we verify.
        proxy_ssl_name localhost;
        proxy_ssl_session_reuse on;"""
        temp = "\n    ".join(
            f"{kind}_temp_path {prefix / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""# Written by mpsl_flwr/ops/proxy.py; see its docstring.
daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    access_log {prefix / "logs" / "access.log"};
    {temp}
    server_tokens off;
    client_max_body_size {max(1, round(self.max_body_mb))}m;
    # Stream bodies both ways: no temp files (workers of a root nginx run as nobody and
    # may not enter the work dir), no delay on tens of MB of activations.
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_connect_timeout 10s;
    proxy_read_timeout {self.timeout_s:.0f}s;
    proxy_send_timeout {self.timeout_s:.0f}s;
    keepalive_timeout 75s;
    upstream superlink {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 16;
    }}
    server {{
        listen {listen};{tls_lines}
        location ~ ^/v1/fleet/({routes})$ {{
            limit_except POST {{ deny all; }}
            proxy_set_header Host $host;
            proxy_set_header Connection "";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # The canonical path, not the client's spelling of it.
            proxy_pass {scheme}://superlink/v1/fleet/$1;
        }}
        location /v1/ {{ return 403; }}
        location / {{ return 404; }}
    }}
}}
"""


@dataclass
class FleetProxy:
    """An nginx we start in front of a SuperLink, under ``prefix`` (its own directory)."""

    prefix: Path
    upstream_port: int
    tls: TlsFiles | None
    listen_host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    max_body_mb: float = 1024.0
    process: ManagedProcess | None = None

    @property
    def site(self) -> ProxySite:
        return ProxySite(
            self.listen_host, self.port, self.upstream_port, self.tls, self.max_body_mb
        )

    @property
    def address(self) -> str:
        """Where a SuperNode on this host dials the proxy."""
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::") else self.listen_host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def write_config(self) -> Path:
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.site.render(self.prefix.resolve()))
        return conf

    def start(self, timeout: float = 30.0) -> FleetProxy:
        """Write the config, check it (``nginx -t``), start nginx, wait until it answers."""
        conf = self.write_config().resolve()
        prefix = self.prefix.resolve()
        cmd = [
            nginx_executable(),
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-e",
            str(prefix / "logs" / "error.log"),
        ]
        self.process = ManagedProcess(
            "nginx (Fleet proxy)",
            cmd,
            {"PATH": "/usr/sbin:/usr/bin:/bin"},
            prefix / "logs" / "nginx.log",
        ).start()
        try:
            wait_for(
                self.answers,
                timeout,
                f"the Fleet proxy to answer on {self.url}",
                watch=[self.process],
            )
        except BaseException:
            self.stop()
            raise
        return self

    def status_of(self, path: str, method: str = "GET", body: bytes | None = None) -> int:
        """The HTTP status the proxy answers for ``path`` (raises OSError if unreachable)."""
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None
        request = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def answers(self) -> bool:
        try:
            return self.status_of("/") == 404
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.process is not None:
            self.process.check_alive()

    def stop(self, grace: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(grace)

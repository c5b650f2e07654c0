"""Cluster mode's side of ``engram bench --cluster``: three NATS JetStream nodes on
loopback (:mod:`engram_cli.bench.natslab`, ``sync_interval: always``) and two engramd
"machines" on them, each with its own socket and data dir."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from engram_cli.client.autostart import start_daemon

READY_TIMEOUT = 60.0


class ClusterMissing(RuntimeError):
    """Cluster mode cannot run here (no nats-py, or no nats-server binary)."""


@contextlib.contextmanager
def cluster_machines(count: int = 2) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """*count* engramd on a fresh 3-node NATS cluster: (socket, environment) each, ready
    and connected to the cluster; all stopped afterwards."""
    try:
        import nats  # noqa: F401  (only to say plainly what is missing)
    except ImportError:
        raise ClusterMissing("cluster mode needs pip install 'engram[cluster]'") from None
    with tempfile.TemporaryDirectory(prefix="engram-bench-cluster-") as scratch:
        os.chmod(scratch, 0o700)
        try:
            nats_cluster = NatsCluster(os.path.join(scratch, "nats"))
            nats_cluster.start()
        except FileNotFoundError as exc:
            raise ClusterMissing(str(exc)) from None
        machines: list[tuple[str, dict[str, str]]] = []
        try:
            nats_cluster.wait_healthy()
            for name in "abcdefgh"[:count]:
                socket_path = os.path.join(scratch, name, "engramd.sock")
                env = {**os.environ, "ENGRAM_SOCKET": socket_path,
                       "ENGRAM_DATA_DIR": os.path.join(scratch, name, "data"),
                       "ENGRAM_NO_AUTOSTART": "1", "ENGRAM_SEARCH_SEMANTIC": "off",
                       "ENGRAM_CLUSTER_SERVERS": nats_cluster.servers}
                os.makedirs(os.path.dirname(socket_path), mode=0o700)
                start_daemon(socket_path, env=env)
                machines.append((socket_path, env))
                _wait_connected(socket_path)
            yield machines
        finally:
            for socket_path, _ in machines:
                with contextlib.suppress(Exception), Client(socket_path,
                                                            autostart=False) as client:
                    client.shutdown()
            nats_cluster.stop_all()


def _wait_connected(socket_path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    with Client(socket_path, autostart=False) as client:
        client.wait_ready(timeout=READY_TIMEOUT)
        while True:
            cluster = client.status().cluster
            if cluster is not None and cluster.reachable:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"engramd on {socket_path} did not reach the cluster")
            time.sleep(0.05)


def jetstream_floor(servers: str, count: int) -> list[float]:
    """The floor under a cluster write: the latencies (seconds, sorted) of a bare nats-py
    publish, one at a time, to a stream of 3 replicas on the same NATS servers (nothing
    of engram)."""
    import asyncio

    import nats
    from nats.js import api

    async def measure() -> list[float]:
        nc = await nats.connect(servers=servers.split(","))
        try:
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(
                name="BENCH_FLOOR", subjects=["bench.floor"], num_replicas=3,
                storage=api.StorageType.FILE))
            payload = b"x" * 256
            latencies = []
            for number in range(count + 50):
                started = time.perf_counter()
                await js.publish("bench.floor", payload, headers={"Nats-Msg-Id": str(number)})
                if number >= 50:
                    latencies.append(time.perf_counter() - started)
            await js.delete_stream("BENCH_FLOOR")
            return sorted(latencies)
        finally:
            await nc.close()

    return asyncio.run(measure())

"""Cluster mode's rows of ``engram bench --cluster`` (``cluster.*``): three NATS JetStream nodes on
loopback (:mod:`engram_cli.bench.natslab`, ``sync_interval: always``) and two engramd
"machines" on them, each with its own socket and data dir."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping

from engram_cli.bench.harness import (
    PAYLOAD,
    BenchTarget,
    Measurement,
    percentile,
    sockets_beside,
    timed_loop,
)
from engram_cli.bench.leases import bench_lock_cycle, handover
from engram_cli.bench.natslab import NatsCluster
from engram_cli.bench.stream import fan_out, start_watchers
from engram_cli.client import Client
from engram_cli.client.autostart import start_daemon

READY_TIMEOUT = 60.0


class ClusterMissing(RuntimeError):
    """Cluster mode cannot run here (no nats-py, or no nats-server binary)."""


@contextlib.contextmanager
def cluster_machines(count: int = 2) -> Iterator[list[tuple[str, dict[str, str]]]]:
    """*count* engramd on a fresh 3-node NATS cluster: (socket, environment) each, ready
    and connected to the cluster; all stopped afterwards."""
    with cluster_lab(count) as (_, machines):
        yield machines


@contextlib.contextmanager
def cluster_lab(count: int = 2) -> Iterator[tuple[NatsCluster, list[tuple[str, dict[str, str]]]]]:
    """:func:`cluster_machines` with the NATS cluster they run on (to stop and start its
    nodes: ``engram bench --soak --cluster``)."""
    try:
        import nats  # noqa: F401  (only to say plainly what is missing)
    except ImportError:
        raise ClusterMissing("cluster mode needs pip install 'engram-journal[cluster]'") from None
    with tempfile.TemporaryDirectory(prefix="engram-bench-cluster-") as scratch, \
            sockets_beside(scratch) as sockets:
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
                socket_path = os.path.join(sockets, name, "engramd.sock")
                env = {**os.environ, "ENGRAM_SOCKET": socket_path,
                       "ENGRAM_DATA_DIR": os.path.join(scratch, name, "data"),
                       "ENGRAM_NO_AUTOSTART": "1", "ENGRAM_SEARCH_SEMANTIC": "off",
                       "ENGRAM_CLUSTER_SERVERS": nats_cluster.servers}
                os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
                start_daemon(socket_path, env=env)
                machines.append((socket_path, env))
                _wait_connected(socket_path)
            yield nats_cluster, machines
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


def kv_cas_floor(servers: str, count: int) -> tuple[list[float], list[float]]:
    """The floor under a lease operation: the latencies (seconds, sorted) of a bare
    nats-py compare-and-set write to a key of a key-value bucket made as engram makes
    its leases bucket (3 replicas, per-key TTLs), one at a time; and of an atomic batch
    of two such writes (``Nats-Batch-Id``, one round trip: the floor under a handover in
    one write, SPECS §9.1). Nothing of engram."""
    import asyncio

    import nats
    from nats.js import api

    async def measure() -> tuple[list[float], list[float]]:
        nc = await nats.connect(servers=servers.split(","))
        try:
            js = nc.jetstream()
            await js.create_key_value(api.KeyValueConfig(
                bucket="bench_floor_cas", history=1, storage=api.StorageType.FILE,
                replicas=3, direct=False, limit_marker_ttl=60.0))
            config = (await js.stream_info("KV_bench_floor_cas")).config
            config.allow_atomic = True
            await js.update_stream(config)
            subject, payload = "$KV.bench_floor_cas.", b"x" * 256
            revisions = {"a": 0, "b": 0}
            single: list[float] = []
            batch: list[float] = []
            for number in range(count + 50):
                started = time.perf_counter()
                ack = await js.publish(subject + "a", payload, headers={
                    "Nats-Expected-Last-Subject-Sequence": str(revisions["a"]),
                    "Nats-TTL": "60s"})
                revisions["a"] = ack.seq
                if number >= 50:
                    single.append(time.perf_counter() - started)
                started = time.perf_counter()
                batch_id = f"floor-{number}"
                await nc.publish(subject + "a", payload, headers={
                    "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "1",
                    "Nats-Expected-Last-Subject-Sequence": str(revisions["a"]),
                    "Nats-TTL": "60s"})
                reply = await nc.request(subject + "b", payload, timeout=5.0, headers={
                    "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "2",
                    "Nats-Batch-Commit": "1",
                    "Nats-Expected-Last-Subject-Sequence": str(revisions["b"]),
                    "Nats-TTL": "60s"})
                if number >= 50:
                    batch.append(time.perf_counter() - started)
                answer = json.loads(reply.data)
                if "error" in answer:
                    raise RuntimeError(f"atomic batch refused: {answer['error']}")
                revisions["a"], revisions["b"] = answer["seq"] - 1, answer["seq"]
            await js.delete_key_value("bench_floor_cas")
            return sorted(single), sorted(batch)
        finally:
            await nc.close()

    return asyncio.run(measure())


def bench_floor_cluster_cas(target: BenchTarget) -> Measurement:
    """The floor under a cluster lease operation: one compare-and-set write to a key of a
    3-replica key-value bucket on 3 NATS nodes on loopback (no engramd), one at a time."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return Measurement([], 0.0, note="not run: cluster mode needs pip install "
                                         "'engram-journal[cluster]'")
    with tempfile.TemporaryDirectory(prefix="engram-bench-floor-") as scratch:
        try:
            nats_cluster = NatsCluster(scratch)
            nats_cluster.start()
        except FileNotFoundError as exc:
            return Measurement([], 0.0, note=f"not run: {exc}")
        try:
            nats_cluster.wait_healthy()
            started = time.perf_counter()
            single, batch = kv_cas_floor(nats_cluster.servers, target.count(1000))
            wall = time.perf_counter() - started
        finally:
            nats_cluster.stop_all()
    return Measurement(single, wall, note=(
        f"a bare nats-py KV compare-and-set, one round trip; an atomic batch of two "
        f"(one round trip) p50 {percentile(batch, 0.5) * 1000:.3f} ms"))


Machines = list[tuple[str, dict[str, str]]]
"""Engramd of a cluster: (socket, environment) each (see engram_cli.bench.cluster)."""


def _machine(target: BenchTarget, socket_path: str, env: Mapping[str, str]) -> BenchTarget:
    return dataclasses.replace(target, socket_path=socket_path, env=env, data_dir=None,
                               restart=None)


def _on_two_machines(measure: Callable[[Machines], Measurement]) -> Measurement:
    """``measure(machines)`` on two engramd of a fresh 3-node NATS cluster ((socket,
    environment) each), or a row that says why cluster mode cannot run here."""

    try:
        with cluster_machines(2) as machines:
            return measure(machines)
    except ClusterMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")


def _floor_ms(machines: Machines, count: int) -> list[float]:
    """Bare JetStream publishes on the machines' NATS servers (sorted latencies, ms)."""

    floor = jetstream_floor(machines[0][1]["ENGRAM_CLUSTER_SERVERS"], count)
    return [seconds * 1000 for seconds in floor]


def bench_cluster_write_single(target: BenchTarget) -> Measurement:
    """Cluster mode: one durable unit write (256 bytes) at a time on one machine of two,
    on 3 NATS JetStream nodes on loopback (sync_interval: always): beside write.single."""

    def measure(machines: Machines) -> Measurement:
        floor = _floor_ms(machines, target.count(1000))
        writer = _machine(target, *machines[0])
        with writer.client() as client:
            for _ in range(50):
                client.create_unit("bench-cluster", "MESSAGE", PAYLOAD)
            measurement = timed_loop(writer, target.count(2000), lambda: client.create_unit(
                "bench-cluster", "MESSAGE", PAYLOAD))
        measurement.note = (f"floor: a bare nats-py publish to a 3-replica stream p50 "
                            f"{percentile(floor, 0.5):.3f} ms, p99 "
                            f"{percentile(floor, 0.99):.3f} ms; daemon cpu excludes "
                            "the NATS servers'")
        return measurement

    return _on_two_machines(measure)


def bench_cluster_write_fenced(target: BenchTarget) -> Measurement:
    """Cluster mode: one durable unit write (256 bytes) fenced by a lease held, at a time
    on one machine of two: beside cluster.write.single (the fence's read at the leases
    bucket's leader and its check against the journal's fence marks)."""

    def measure(machines: Machines) -> Measurement:
        writer = _machine(target, *machines[0])
        with writer.client() as client:
            (lease,) = client.acquire_lock("bench-fenced", ttl=600)
            fence = ("bench-fenced", lease.fencing_token)
            for _ in range(50):
                client.create_unit("bench-cluster", "MESSAGE", PAYLOAD, fence=fence)
            measurement = timed_loop(writer, target.count(2000), lambda: client.create_unit(
                "bench-cluster", "MESSAGE", PAYLOAD, fence=fence))
        measurement.note = "a lease held throughout; daemon cpu excludes the NATS servers'"
        return measurement

    return _on_two_machines(measure)


def bench_cluster_fanout10(target: BenchTarget) -> Measurement:
    """Cluster mode: a write's send on machine A -> its event received at each of 10
    watcher processes on machine B: beside stream.fanout10 (one machine)."""
    count = target.count(2000)
    context_id = f"bench-cluster-fan-{os.getpid()}"
    code = ("import sys; from engram_cli.bench.stream import _fan_worker; "
            "_fan_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))")

    def measure(machines: Machines) -> Measurement:
        writer, reader = _machine(target, *machines[0]), _machine(target, *machines[1])
        with writer.client() as client:  # the context exists on B before it is watched
            client.create_unit(context_id, "MESSAGE", PAYLOAD)
        with reader.client() as client:
            while not client.list_units(context_id, limit=1).units:
                time.sleep(0.01)
        watchers = start_watchers(reader, code, reader.socket_path, context_id, str(count))
        measurement = fan_out(writer, watchers, context_id, count)
        measurement.note += "; daemon cpu: the writer's machine"
        return measurement

    return _on_two_machines(measure)


def bench_cluster_lock_cycle(target: BenchTarget) -> Measurement:
    """Cluster mode: uncontended acquire + release of one lease (two compare-and-set
    writes to the leases bucket, 3 replicas), one at a time: beside lock.cycle."""

    def measure(machines: Machines) -> Measurement:
        floor = _floor_ms(machines, target.count(1000))
        measurement = bench_lock_cycle(_machine(target, *machines[0]))
        measurement.note = (f"floor: two bare nats-py publishes to a 3-replica stream p50 "
                            f"{2 * percentile(floor, 0.5):.3f} ms; daemon cpu excludes "
                            "the NATS servers'")
        return measurement

    return _on_two_machines(measure)


def bench_cluster_lock_handover(target: BenchTarget) -> Measurement:
    """Cluster mode: from the holder's release on machine A to the grant at the waiter
    queued on machine B: beside lock.handover."""

    def measure(machines: Machines) -> Measurement:
        single, batch = kv_cas_floor(machines[0][1]["ENGRAM_CLUSTER_SERVERS"],
                                     target.count(300))
        measurement = handover(_machine(target, *machines[0]), machines[1][0])
        measurement.note = ("the release's batch (its end, B's grant, B's ticket) and B's "
                            "watch seeing it; on the same servers a bare KV compare-and-set p50 "
                            f"{percentile(single, 0.5) * 1000:.3f} ms, an atomic batch of "
                            f"two p50 {percentile(batch, 0.5) * 1000:.3f} ms; "
                            "daemon cpu: the holder's machine")
        return measurement

    return _on_two_machines(measure)

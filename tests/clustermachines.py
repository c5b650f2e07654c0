"""Machines of a cluster for the tests: engramd processes, each with a socket and a
data dir of its own, on a NATS cluster (:class:`engram_cli.bench.natslab.NatsCluster`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from tests.conftest import WAIT, run_cli, start_engramd, wait_until


@dataclass
class Machine:
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    reaches_cluster: bool = True
    """Whether it is started expecting to reach the cluster (its leases read)."""
    module: str = "engramd"
    """What ``python -m`` runs as its engramd (a test's helper may stand in for it)."""

    @property
    def socket(self) -> str:
        return self.env["ENGRAM_SOCKET"]

    def start(self) -> Machine:
        """Started, and ready to take leases (its view of the cluster's leases read):
        on a busy machine that can take longer than a lease request waits for it."""
        self.process = start_engramd(self.env, self.module)
        if self.reaches_cluster:
            wait_until(self._leases_synced,
                       f"machine {self.name} to read the cluster's leases")
        return self

    def _leases_synced(self) -> bool:
        with self.client() as engram:
            cluster = engram.status().cluster
        return cluster is not None and cluster.leases_synced

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT)
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(WAIT)
        self.process = None

    def client(self, agent: str = "tester") -> Client:
        return Client(self.socket, agent_id=agent, autostart=False, env={})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args)

    def view_seq(self) -> int:
        with self.client() as engram:
            status = engram.status()
        assert status.cluster is not None
        return status.cluster.view_stream_seq


def machine_on(cluster: NatsCluster, env: dict[str, str], scratch: str, name: str,
               **settings: str) -> Machine:
    """A machine (not started) with a home of its own under *scratch*, on *cluster*;
    *settings* are more ``ENGRAM_*`` variables."""
    home = os.path.join(scratch, name)
    os.makedirs(home, mode=0o700)
    return Machine(name, {**env, "ENGRAM_SOCKET": os.path.join(home, "s.sock"),
                          "ENGRAM_DATA_DIR": os.path.join(home, "data"),
                          "ENGRAM_CLUSTER_SERVERS": cluster.servers, **settings})


@contextlib.contextmanager
def running(machines: list[Machine]) -> Iterator[list[Machine]]:
    """*machines* started, and stopped afterwards whatever happens."""
    try:
        for machine in machines:
            machine.start()
        yield machines
    finally:
        for machine in machines:
            machine.stop()


def deployment_of(nats: NatsCluster, env: dict[str, str], scratch: str,
                  names: tuple[str, ...] = ("a", "b", "c"), **settings: dict[str, str]
                  ) -> list[Machine]:
    """Machines (not started) of a deployment of their own on *nats*; *settings* are
    more variables for the machine of that name."""
    deployment = "d" + uuid.uuid4().hex[:10]
    return [machine_on(nats, env, scratch, name, ENGRAM_CLUSTER_DEPLOYMENT=deployment,
                       **settings.get(name, {}))
            for name in names]

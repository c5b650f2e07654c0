"""Leases in cluster mode: exclusion across engramd machines on one NATS cluster.

Real nats-server processes (three, on loopback) and real engramd processes, talked
to through the real client and CLI. Marked ``cluster`` and ``slow``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from engram_cli.errors import LockHeld
from engram_cli.natslab import NatsCluster
from tests.clustermachines import Machine, machine_on, running

pytest.importorskip("nats", reason="cluster mode needs the engram[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(str(tmp_path_factory.mktemp("nats"))) as cluster:
        yield cluster


@pytest.fixture
def trio_of_machines(env: dict[str, str], scratch: str, nats_cluster: NatsCluster
                     ) -> Iterator[list[Machine]]:
    """Three machines of a deployment of their own on the shared NATS cluster."""
    deployment = "l" + uuid.uuid4().hex[:10]
    with running([machine_on(nats_cluster, env, scratch, name,
                             ENGRAM_CLUSTER_DEPLOYMENT=deployment)
                  for name in ("a", "b", "c")]) as started:
        yield started


def test_a_lease_on_one_machine_excludes_the_others(trio_of_machines: list[Machine]) -> None:
    a, b, _ = trio_of_machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (held,) = alice.acquire_lock("deploy:prod", ttl=30)
        with pytest.raises(LockHeld, match="alice"):
            bob.acquire_lock("deploy:prod", ttl=30)
        alice.release_lock(held.lock_id)
        (next_holder,) = bob.acquire_lock("deploy:prod", ttl=30, wait=5)
        assert next_holder.fencing_token > held.fencing_token

"""Records in the leases bucket that no engramd wrote (cluster mode).

Anyone with the cluster's credentials can write the bucket: what a forged record says
must not make an engramd act on its own machine beyond the lease it describes. Real
nats-server processes (the session's three, on loopback) and real engramd machines;
the forged records are written straight into the bucket with nats-py, as an attacker
would. Marked ``cluster`` and ``slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client.errors import EngramError
from engramd.grants import boot_id, boottime
from engramd.protocol import Lease
from tests.clustermachines import Machine
from tests.conftest import WAIT, engramd_log, wait_until

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

import nats  # noqa: E402

from engramd.cluster.bucket import (  # noqa: E402
    Held,
    Terms,
    Ticket,
    encode_record,
    holder_token,
    lease_key,
    ticket_key,
)

HANDED_OVER = "leases_handed_over_total"


def write_raw(nats_cluster: NatsCluster, machine: Machine, key: str, value: bytes,
              ttl: str | None = None) -> int:
    """*value* as *key* of *machine*'s deployment's leases bucket, written by nats-py
    (not by an engramd); its revision."""
    bucket = f"engram_{machine.env['ENGRAM_CLUSTER_DEPLOYMENT']}_leases"

    async def write() -> int:
        nc = await nats.connect(servers=nats_cluster.servers.split(","))
        try:
            ack = await nc.jetstream().publish(f"$KV.{bucket}.{key}", value,
                                               headers={"Nats-TTL": ttl} if ttl else None)
            return int(ack.seq)
        finally:
            await nc.close()

    return asyncio.run(write())


def machine_id(machine: Machine) -> str:
    with machine.client() as engram:
        cluster = engram.status().cluster
    assert cluster is not None
    return cluster.machine


def lease_seen(machine: Machine, resource: str) -> Lease | None:
    with machine.client("observer") as engram:
        return engram.get_lock(resource).lease


def counter(machine: Machine, name: str) -> int:
    with machine.client() as engram:
        return int(engram.stats().counters.get(name, 0))


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process group of this machine's (a process leading a session of its own) that
    no lease was ever asked for."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process
    process.kill()
    process.wait(WAIT)


def test_a_forged_held_record_naming_a_process_group_never_stops_it(
        machines: list[Machine], nats_cluster: NatsCluster,
        victim: subprocess.Popen[bytes]) -> None:
    a, _, _ = machines
    now, ttl = dt.datetime.now(dt.UTC), 2.0
    forged = Lease(resource="forged", holder="mallory", lock_id=secrets.token_hex(16),
                   fencing_token=0, acquired_at=now,
                   expires_at=now + dt.timedelta(seconds=ttl), ttl=ttl, boot_id=boot_id(),
                   deadline_boottime=boottime() + ttl, session="mallory", holder_pid=1,
                   machine=machine_id(a), pgid=victim.pid)
    write_raw(nats_cluster, a, lease_key("forged", holder_token("mallory", "mallory")),
              encode_record(Held(forged)), ttl="2s")
    wait_until(lambda: (seen := lease_seen(a, "forged")) is not None
               and seen.lock_id == forged.lock_id, "a to see the forged lease")
    wait_until(lambda: lease_seen(a, "forged") is None, "the forged lease to end on a")
    assert victim.poll() is None, "an engramd stopped a group that a forged record named"


def test_a_forged_ticket_handed_a_lease_never_has_a_group_stopped(
        machines: list[Machine], nats_cluster: NatsCluster,
        victim: subprocess.Popen[bytes]) -> None:
    a, b, _ = machines
    with b.client("bob") as bob:
        (held,) = bob.acquire_lock("res", ttl=30)
        lock_id = secrets.token_hex(16)
        ticket = Ticket(number=0, machine=machine_id(a), agent="mallory", session="mallory",
                        pid=1, resources=["res"], terms=Terms(
                            ttl=2.0, lock_ids=[lock_id], boot_id=boot_id(), sent=boottime(),
                            pid=victim.pid, pgid=victim.pid))
        write_raw(nats_cluster, a, ticket_key(secrets.token_hex(8)), encode_record(ticket),
                  ttl="30s")
        wait_until(lambda: len(bob.get_lock("res").waiters) == 1, "b to see the ticket")
        bob.release_lock(held.lock_id)
    wait_until(lambda: counter(b, HANDED_OVER) == 1, "the release to hand the lease over")
    wait_until(lambda: lease_seen(a, "res") is None, "the handed-over lease to end on a")
    assert victim.poll() is None, "an engramd stopped a group that a forged ticket named"


def test_a_lock_run_s_group_is_still_stopped_by_its_machine_after_a_restart(
        machines: list[Machine], tmp_path: Path) -> None:
    """The groups a machine checked itself are kept in its data dir: a lease granted
    before a restart of its engramd still has its group stopped before its end (here a
    process of CMD's that ignores SIGTERM and outlives a SIGKILL of its lock run)."""
    from tests.cli.test_lock_run_tree import STUBBORN, living

    a, b, _ = machines
    beats = tmp_path / "beats"
    cmd = f'{sys.executable} -c "$STUBBORN" {beats} & echo $$ > {tmp_path}/pid; wait'
    runner = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", "job", "--ttl", "60", "--",
         "sh", "-c", cmd], env={**a.env, "ENGRAM_AGENT": "runner", "STUBBORN": STUBBORN},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pgid = 0
    try:
        wait_until(lambda: beats.exists() and (tmp_path / "pid").exists(), "CMD to start")
        pgid = int((tmp_path / "pid").read_text())
        a.stop()
        a.start()
        wait_until(lambda: lease_seen(a, "job") is not None, "a to hold the lease again")
        runner.send_signal(signal.SIGKILL)  # (its machine ends the lease, CMD's group first)
        runner.wait(WAIT)
        with b.client("bob") as bob:
            bob.acquire_lock("job", ttl=30, wait=WAIT)  # long before 60 s
        assert living(pgid) == []
    finally:
        runner.kill()
        runner.wait(WAIT)
        if pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def forged_ticket(machine: str, resource: str, *, ttl: float = 2.0, number: int = 0
                  ) -> Ticket:
    return Ticket(number=number, machine=machine, agent="mallory", session="mallory", pid=1,
                  resources=[resource], terms=Terms(
                      ttl=ttl, lock_ids=[secrets.token_hex(16)], boot_id="x",
                      sent=boottime()))


def test_a_ticket_not_written_again_leaves_the_line_on_every_machine(
        machines: list[Machine], nats_cluster: NatsCluster) -> None:
    """A ticket without a TTL of its own, numbered ahead of every other: it blocked the
    resource on every machine for ever. Nobody writes it again: it leaves the line."""
    a, b, _ = machines
    write_raw(nats_cluster, a, ticket_key(secrets.token_hex(8)),
              encode_record(forged_ticket("nowhere", "res", number=1)))
    with b.client("bob") as bob:
        wait_until(lambda: len(bob.get_lock("res").waiters) == 1, "b to see the ticket")
        wait_until(lambda: not bob.get_lock("res").waiters, "the ticket to leave the line",
                   timeout=4 * WAIT)
        (held,) = bob.acquire_lock("res", ttl=30, wait=0)
    assert held.fencing_token > 0


def test_a_ticket_an_engramd_would_not_write_is_refused_whole(
        machines: list[Machine], nats_cluster: NatsCluster) -> None:
    """A ticket whose lease would outlast locks.max_ttl (a lease handed over to it
    nobody could break), or with no lock id for its resource, or a process group without
    its process, never joins the line; a valid ticket written after them does."""
    a, b, _ = machines
    bad = [forged_ticket("nowhere", "res", ttl=1e9), forged_ticket("nowhere", "res")]
    bad[1] = msgspec.structs.replace(bad[1], terms=msgspec.structs.replace(
        bad[1].terms, lock_ids=[]))
    bad.append(msgspec.structs.replace(bad[0], terms=msgspec.structs.replace(
        bad[0].terms, ttl=2.0, pgid=4242)))
    for ticket in bad:
        write_raw(nats_cluster, a, ticket_key(secrets.token_hex(8)), encode_record(ticket),
                  ttl="30s")
    write_raw(nats_cluster, a, ticket_key(secrets.token_hex(8)),
              encode_record(forged_ticket("nowhere", "res")), ttl="30s")
    with b.client("bob") as bob:
        wait_until(lambda: bool(bob.get_lock("res").waiters), "b to see the valid ticket")
        assert len(bob.get_lock("res").waiters) == 1


def test_a_key_not_engrams_is_logged_once_however_often_it_is_written(
        machines: list[Machine], nats_cluster: NatsCluster) -> None:
    """A forger rewriting an invalid ticket every second wrote a warning a revision into
    every machine's log."""
    a, b, _ = machines
    key = ticket_key(secrets.token_hex(8))
    for _ in range(5):
        write_raw(nats_cluster, a, key, encode_record(forged_ticket("nowhere", "res",
                                                                    ttl=1e9)), ttl="30s")
    last = write_raw(nats_cluster, a, ticket_key(secrets.token_hex(8)),
                     encode_record(forged_ticket("nowhere", "res")), ttl="30s")
    with b.client("bob") as bob:  # the valid ticket, written last, seen: the rest too
        wait_until(lambda: bool(bob.get_lock("res").waiters), "b to see the valid ticket")
    assert last > 0
    said = [line for line in engramd_log(b.env).read_text().splitlines()
            if key in line and "not engram's" in line]
    assert len(said) == 1, said


def test_a_leases_bucket_deleted_and_made_again_never_hands_out_a_used_token(
        machines: list[Machine], nats_cluster: NatsCluster) -> None:
    """Fencing tokens are the bucket's revisions: a bucket made again from 1 handed out
    tokens already used, and a holder's fenced write with one was refused as stale. The
    machines see it gone and make it again, numbered after every token they know of
    (the journal's fence marks, the revisions their watch saw)."""
    a, b, _ = machines
    with a.client("alice") as alice:
        for number in range(3):
            (lease,) = alice.acquire_lock("res", ttl=30)
            alice.create_unit("c", "MESSAGE", f"fenced {number}",
                              fence=("res", lease.fencing_token))
            alice.release_lock(lease.lock_id)
    used = lease.fencing_token
    bucket = f"engram_{a.env['ENGRAM_CLUSTER_DEPLOYMENT']}_leases"

    async def delete() -> None:
        nc = await nats.connect(servers=nats_cluster.servers.split(","))
        try:
            await nc.jetstream().delete_stream(f"KV_{bucket}")
        finally:
            await nc.close()

    asyncio.run(delete())
    taken: list[Lease] = []
    refusals: list[str] = []

    def take() -> bool:
        with b.client("bob") as bob:
            try:
                taken.extend(bob.acquire_lock("res", ttl=30, wait=0))
            except EngramError as exc:
                refusals.append(str(exc))
                return False
        return True

    wait_until(take, "a lease from the bucket made again", timeout=4 * WAIT)
    # Meanwhile each refusal said why in one line: the bucket gone, or (while the new
    # one elects its leader) the cluster not answering.
    assert [why for why in refusals if "\n" in why or not (
        f"leases bucket {bucket} is gone" in why or "did not answer" in why)] == []
    (lease,) = taken
    assert lease.fencing_token > used
    with b.client("bob") as bob:
        bob.create_unit("c", "MESSAGE", "fenced again", fence=("res", lease.fencing_token))

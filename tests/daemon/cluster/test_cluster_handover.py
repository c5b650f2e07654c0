"""A release that hands its lease over to the next in line in one write (cluster mode).

Real nats-server processes (the session's three, on loopback), real engramd machines
talked to through the real client; a fault is injected, where a test needs one, by
:mod:`tests.helpers.handover_engramd` standing in for a machine's engramd. What the
servers stored is watched through a JetStream consumer of the test's own
(:class:`BucketTap`). Marked ``cluster`` and ``slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client.errors import Timeout
from engramd.protocol import Lease
from tests.clustermachines import Machine, deployment_of, running
from tests.conftest import WAIT, wait_until

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

from engramd.cluster.bridge import AsyncioThread  # noqa: E402
from engramd.cluster.bucket import Ended, Held, decode_lease_record  # noqa: E402

FAULTY = "tests.helpers.handover_engramd"
LEASE_WRITES = 'cluster_lease_writes_total{what="lease"}'
HANDED_OVER = "leases_handed_over_total"


@dataclass(frozen=True)
class Stored:
    """A message the servers stored in the leases bucket."""

    seq: int
    key: str
    headers: dict[str, str]
    value: bytes

    @property
    def batch(self) -> str:
        return self.headers.get("Nats-Batch-Id", "")


class BucketTap:
    """Every message stored in a deployment's leases bucket from now on, in order, seen
    through an ordered JetStream consumer on an asyncio loop of its own (a thread)."""

    def __init__(self, servers: str, deployment: str) -> None:
        self.servers = servers.split(",")
        self.bucket = f"engram_{deployment}_leases"
        self.stored: list[Stored] = []
        self._thread = AsyncioThread("bucket-tap")
        self._nc: Any = None

    def __enter__(self) -> BucketTap:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._thread.loop).result(WAIT)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._nc.close(), self._thread.loop).result(WAIT)
        self._thread.stop()  # (what nats-py leaves running is ended first)

    async def _start(self) -> None:
        import nats
        from nats.js import api

        self._nc = await nats.connect(servers=self.servers)
        prefix = f"$KV.{self.bucket}."

        async def got(msg: Any) -> None:
            self.stored.append(Stored(msg.metadata.sequence.stream, msg.subject[len(prefix):],
                                      dict(msg.headers or {}), msg.data or b""))

        await self._nc.jetstream().subscribe(
            prefix + ">", stream=f"KV_{self.bucket}", cb=got, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW)

    def at(self, seq: int) -> Stored:
        wait_until(lambda: any(s.seq >= seq for s in self.stored), f"message {seq} stored")
        (found,) = [s for s in self.stored if s.seq == seq]
        return found


def counter(machine: Machine, name: str) -> int:
    with machine.client("observer") as engram:
        return int(engram.stats().counters.get(name, 0))


def waiters_seen(machine: Machine, resource: str) -> int:
    with machine.client("observer") as engram:
        return len(engram.get_lock(resource).waiters)


def holder_seen(machine: Machine, resource: str) -> Lease | None:
    with machine.client("observer") as engram:
        return engram.get_lock(resource).lease


class Waiter:
    """An acquire that waits in line, in a thread: its leases, or what it raised."""

    def __init__(self, machine: Machine, agent: str, resource: str | list[str],
                 wait: float = 30, **options: Any) -> None:
        self.leases: list[Lease] = []
        self.error: BaseException | None = None
        self._client = machine.client(agent)
        self._thread = threading.Thread(target=self._run, args=(resource, wait, options))
        self._thread.start()

    def _run(self, resource: str | list[str], wait: float, options: dict[str, Any]) -> None:
        try:
            self.leases = self._client.acquire_lock(resource, ttl=30, wait=wait, **options)
        except BaseException as exc:  # (handed to the test)
            self.error = exc

    def leases_when_done(self) -> list[Lease]:
        self._thread.join(WAIT * 3)
        assert not self._thread.is_alive(), "the waiter is still waiting"
        if self.error is not None:
            raise self.error
        return self.leases

    def result(self) -> Lease:
        (lease,) = self.leases_when_done()
        return lease

    def release(self) -> None:
        self._client.release_lock(self.result().lock_id)

    def close(self) -> None:
        self._thread.join(WAIT * 3)
        self._client.close()


@contextlib.contextmanager
def waiting(machine: Machine, agent: str, resource: str | list[str], *, seen_on: Machine,
            ahead: int = 0, resource_seen: str = "", **options: Any) -> Iterator[Waiter]:
    """A :class:`Waiter` on *machine*, in line (*seen_on* shows it behind *ahead* in the
    line of *resource_seen*, by default its resource)."""
    waiter = Waiter(machine, agent, resource, **options)
    seen = resource_seen or str(resource)
    try:
        wait_until(lambda: waiters_seen(seen_on, seen) == ahead + 1,
                   f"{agent} to be in line")
        yield waiter
    finally:
        waiter.close()


def test_a_release_hands_the_lease_to_a_waiter_elsewhere_in_one_batch(
        machines: list[Machine], nats_cluster: NatsCluster) -> None:
    a, b, _ = machines
    resource = "deploy:" + uuid.uuid4().hex[:8]
    deployment = a.env["ENGRAM_CLUSTER_DEPLOYMENT"]
    with BucketTap(nats_cluster.servers, deployment) as tap, a.client("alice") as alice:
        (held,) = alice.acquire_lock(resource, ttl=30)
        with waiting(b, "bob", resource, seen_on=a) as bob:
            b_writes = counter(b, LEASE_WRITES)
            alice.release_lock(held.lock_id)
            granted = bob.result()
            # b wrote nothing for the grant: its watch showed it.
            assert counter(b, LEASE_WRITES) == b_writes
            assert counter(a, HANDED_OVER) == 1
            assert granted.fencing_token > held.fencing_token
            assert granted.machine and granted.machine != held.machine
            # One batch: alice's end, bob's lease (its token: its revision), bob's
            # ticket consumed, one after the other, stored together.
            lease = tap.at(granted.fencing_token)
            end, consumed = tap.at(lease.seq - 1), tap.at(lease.seq + 1)
            assert lease.batch and end.batch == lease.batch == consumed.batch
            assert [s.seq for s in tap.stored if s.batch == lease.batch] == [
                end.seq, lease.seq, consumed.seq]
            record = decode_lease_record(lease.value)
            assert isinstance(record, Held) and record.waiter
            assert record.lease.lock_id == granted.lock_id
            ended = decode_lease_record(end.value)
            assert isinstance(ended, Ended) and ended.by == "alice"
            assert consumed.key.startswith("w.") and consumed.value == b""
            # The grant counts for every machine, and bob's lease works as any other.
            wait_until(lambda: getattr(holder_seen(a, resource), "lock_id", None)
                       == granted.lock_id, "a to see bob's lease")
            with b.client("bob") as same:
                same.create_unit("notes", "MESSAGE", "fenced",
                                 fence=(resource, granted.fencing_token))
            bob.release()
            wait_until(lambda: holder_seen(a, resource) is None, "bob's release everywhere")


def test_waiters_on_both_machines_are_handed_over_to_in_line_order(
        machines: list[Machine]) -> None:
    """Each holder releases with the next waiter in line (on the same machine or the
    other): every release hands over, in ticket order, tokens rising."""
    a, b, _ = machines
    resource = "queue:" + uuid.uuid4().hex[:8]
    before = counter(a, HANDED_OVER) + counter(b, HANDED_OVER)
    with a.client("alice") as alice, contextlib.ExitStack() as stack:
        (held,) = alice.acquire_lock(resource, ttl=30)
        line = []
        for number, machine in enumerate((b, a, b, a)):
            line.append(stack.enter_context(waiting(
                machine, f"w{number}-{machine.name}", resource, seen_on=a, ahead=number)))
        wait_until(lambda: waiters_seen(b, resource) == 4, "b to see the whole line")
        alice.release_lock(held.lock_id)
        tokens = [held.fencing_token]
        for waiter in line:
            lease = waiter.result()  # (the next ones still wait)
            assert all(not later.leases for later in line[line.index(waiter) + 1:])
            tokens.append(lease.fencing_token)
            waiter.release()
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    # Four handovers (alice's release, and each waiter's but the last's).
    assert counter(a, HANDED_OVER) + counter(b, HANDED_OVER) - before == 4


def test_readers_on_two_machines_are_handed_over_to_together(machines: list[Machine]) -> None:
    """A writer's release lets two readers go, one of them waiting for resources under two
    roots: one batch grants them all."""
    a, b, _ = machines
    root = f"file:github.com/t/{uuid.uuid4().hex[:8]}:"
    plain = "other:" + uuid.uuid4().hex[:8]
    before = counter(a, HANDED_OVER)
    with a.client("writer") as writer:
        (held,) = writer.acquire_lock(root + "data/", ttl=30)
        with waiting(b, "r1", root + "data/", seen_on=a, shared=True) as one, \
                waiting(a, "r2", [root + "data/x", plain], seen_on=a, shared=True,
                        resource_seen=plain) as two:
            writer.release_lock(held.lock_id)
            first = one.result()
            second = sorted(two.leases_when_done(), key=lambda lease: lease.resource)
            assert counter(a, HANDED_OVER) - before == 1
            assert [lease.resource for lease in second] == [root + "data/x", plain]
            tokens = sorted([first.fencing_token] + [lease.fencing_token for lease in second])
            assert tokens[0] > held.fencing_token
            assert tokens == list(range(tokens[0], tokens[0] + 3))  # one batch, in a row
            assert all(lease.shared for lease in [first, *second])


def test_a_write_under_the_root_since_the_view_makes_the_release_write_alone(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, tmp_path: Path
        ) -> None:
    """A third party writes a lease under the root just before a's batch goes (a's view
    has not seen it): the batch's expectation fails and nothing of it is stored; a
    writes its end alone, and b's waiter takes the lease itself."""
    trigger = tmp_path / "intrude"
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"), a={
        "HANDOVER_FAULT": "intrude", "HANDOVER_FAULT_FILE": str(trigger)})
    a, b = machines
    a.module = FAULTY
    resource = f"file:github.com/t/{uuid.uuid4().hex[:8]}:job"
    with running(machines), a.client("alice") as alice:
        (held,) = alice.acquire_lock(resource, ttl=30)
        with waiting(b, "bob", resource, seen_on=a) as bob:
            b_writes = counter(b, LEASE_WRITES)
            trigger.touch()
            alice.release_lock(held.lock_id)
            granted = bob.result()
            assert not trigger.exists(), "the intruder wrote"
            assert counter(a, HANDED_OVER) == 0
            assert counter(b, LEASE_WRITES) > b_writes  # bob's own grant
            assert granted.fencing_token > held.fencing_token
            bob.release()


def test_a_batch_sent_again_after_its_answer_was_lost_is_known_stored(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, tmp_path: Path
        ) -> None:
    """a's batch is stored, its answer lost; sent again, it is refused (its message ids
    were stored): a reads the keys, finds its grant there, and counts the handover."""
    trigger = tmp_path / "lose"
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"), a={
        "HANDOVER_FAULT": "lose-answer", "HANDOVER_FAULT_FILE": str(trigger)})
    a, b = machines
    a.module = FAULTY
    resource = "job:" + uuid.uuid4().hex[:8]
    with running(machines), a.client("alice") as alice:
        (held,) = alice.acquire_lock(resource, ttl=30)
        with waiting(b, "bob", resource, seen_on=a) as bob:
            a_writes, b_writes = counter(a, LEASE_WRITES), counter(b, LEASE_WRITES)
            trigger.touch()
            alice.release_lock(held.lock_id)
            granted = bob.result()
            assert not trigger.exists(), "the answer was lost"
            assert counter(a, HANDED_OVER) == 1
            assert counter(a, LEASE_WRITES) == a_writes  # no end written alone
            assert counter(b, LEASE_WRITES) == b_writes
            assert granted.fencing_token > held.fencing_token
            bob.release()


def test_a_lease_handed_over_to_a_waiter_that_gave_up_is_ended_at_once(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, tmp_path: Path
        ) -> None:
    """b's watch shows the grant only after its waiter gave up: b ends it at once (not
    at its ttl), and no lease is left held."""
    trigger = tmp_path / "slow"
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"), b={
        "HANDOVER_FAULT": "slow-grant", "HANDOVER_FAULT_FILE": str(trigger),
        "HANDOVER_FAULT_DELAY": "5"})
    a, b = machines
    b.module = FAULTY
    resource = "job:" + uuid.uuid4().hex[:8]
    with running(machines), a.client("alice") as alice:
        (held,) = alice.acquire_lock(resource, ttl=30)
        # (bob's wait must outlast the time until a sees his ticket and releases, on a
        # loaded machine too, and end before b's slowed watch shows the grant)
        with waiting(b, "bob", resource, seen_on=a, wait=3.0) as bob:
            trigger.touch()
            alice.release_lock(held.lock_id)
            with pytest.raises(Timeout):
                bob.result()
        assert not trigger.exists(), "b's watch was slowed"
        assert counter(a, HANDED_OVER) == 1
        # Ended by b as soon as its watch showed it (the ttl is 30 s).
        for machine in machines:
            wait_until(lambda m=machine: holder_seen(m, resource) is None,  # type: ignore[misc]
                       f"{machine.name} to see the resource free")
        (again,) = alice.acquire_lock(resource, ttl=30)
        assert again.fencing_token > held.fencing_token


def test_a_bucket_made_before_is_made_to_take_batches(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """A leases bucket an engramd made before atomic batches (without allow_atomic) is
    given it by the stream update an engramd makes when it opens the bucket."""
    import nats
    from nats.js import api

    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"))
    stream = f"KV_engram_{machines[0].env['ENGRAM_CLUSTER_DEPLOYMENT']}_leases"

    async def allows_atomic(create: bool) -> bool:
        nc = await nats.connect(servers=nats_cluster.servers.split(","))
        try:
            js = nc.jetstream()
            if create:
                await js.create_key_value(api.KeyValueConfig(
                    bucket=stream[3:], description="engram leases", history=1,
                    storage=api.StorageType.FILE, replicas=3, direct=False,
                    limit_marker_ttl=60.0))
            return bool((await js.stream_info(stream)).config.allow_atomic)
        finally:
            await nc.close()

    assert not asyncio.run(allows_atomic(create=True))
    a, b = machines
    resource = "job:" + uuid.uuid4().hex[:8]
    with running(machines), a.client("alice") as alice:
        assert asyncio.run(allows_atomic(create=False))
        (held,) = alice.acquire_lock(resource, ttl=30)
        with waiting(b, "bob", resource, seen_on=a) as bob:
            alice.release_lock(held.lock_id)
            assert bob.result().fencing_token > held.fencing_token
            assert counter(a, HANDED_OVER) == 1
            bob.release()


def test_a_lock_run_granted_late_with_little_of_its_ttl_left_keeps_its_command(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, tmp_path: Path
        ) -> None:
    """b's watch shows a handover to b's ``lock run`` 7 s late: the lease comes with 3-5 s
    of its 9 s ttl left, less than the holder's stop needs after a renewal a third of
    the ttl after the answer. It is renewed at once (or, too late for that, not
    granted and taken again): its CMD runs to its end, and lock run exits 0."""
    trigger = tmp_path / "slow"
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"), b={
        "HANDOVER_FAULT": "slow-grant", "HANDOVER_FAULT_FILE": str(trigger),
        "HANDOVER_FAULT_DELAY": "7"})
    a, b = machines
    b.module = FAULTY
    resource = "job:" + uuid.uuid4().hex[:8]
    done = tmp_path / "done"
    with running(machines), a.client("alice") as alice:
        (held,) = alice.acquire_lock(resource, ttl=30)
        runner = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "lock", "run", resource, "--ttl", "9",
             "--", "sh", "-c", f"sleep 4; echo $$ > {done}"],
            env={**b.env, "ENGRAM_AGENT": "runner"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: waiters_seen(a, resource) == 1, "lock run to be in line")
            trigger.touch()
            alice.release_lock(held.lock_id)
            _, err = runner.communicate(timeout=WAIT * 4)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        assert not trigger.exists(), "b's watch was slowed"
        assert counter(a, HANDED_OVER) == 1
        assert runner.returncode == 0, err
        assert done.exists(), err


def test_the_end_of_a_stale_grant_spares_the_group_a_later_lease_names(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, tmp_path: Path
        ) -> None:
    """A request naming process group G waits on b and its connection goes (as a ``lock
    run`` whose request timed out asks again), just as a release on a hands it the
    lease; a later request of the same group is granted on b before b's slowed watch
    shows the stale grant. b ends that grant, and G, which the later lease covers,
    is not stopped."""
    trigger = tmp_path / "slow"
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"), b={
        "HANDOVER_FAULT": "slow-grant", "HANDOVER_FAULT_FILE": str(trigger),
        "HANDOVER_FAULT_DELAY": "4"})
    a, b = machines
    b.module = FAULTY
    resource, other = "job:" + uuid.uuid4().hex[:8], "other:" + uuid.uuid4().hex[:8]
    group = subprocess.Popen(["sleep", "600"], process_group=0)
    try:
        with running(machines), a.client("alice") as alice:
            (held,) = alice.acquire_lock(resource, ttl=30)
            first = subprocess.Popen([sys.executable, "-c", (
                "import sys; from engram_cli.client import Client; "
                "Client(sys.argv[1], agent_id='runner', autostart=False).acquire_lock("
                "sys.argv[2], ttl=30, wait=30, pid=int(sys.argv[3]), pgid=int(sys.argv[4]))"),
                b.socket, resource, str(os.getpid()), str(group.pid)], env=b.env)
            wait_until(lambda: waiters_seen(a, resource) == 1, "the first request in line")
            trigger.touch()
            alice.release_lock(held.lock_id)
            wait_until(lambda: counter(a, HANDED_OVER) == 1, "the handover")
            first.kill()  # its connection goes before b sees its grant
            first.wait()
            with b.client("runner") as again:
                (later,) = again.acquire_lock(other, ttl=30, pid=os.getpid(),
                                              pgid=group.pid)
                assert later.fencing_token > held.fencing_token
                # b's watch shows the stale grant and b ends it.
                wait_until(lambda: not trigger.exists(), "b's watch to be slowed")
                wait_until(lambda: holder_seen(b, resource) is None,
                           "b to end the stale grant")
                assert group.poll() is None, "the group of the later lease was stopped"
                again.release_lock(later.lock_id)  # (this one stops it)
            assert group.wait(WAIT) is not None
    finally:
        if group.poll() is None:
            group.kill()
            group.wait()

"""Leases in cluster mode: exclusion across engramd machines on one NATS cluster.

Real nats-server processes (three, on loopback) and real engramd processes, talked
to through the real client and the real ``engram lock run``. Marked ``cluster``
and ``slow``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from engram_cli.client.autostart import process_gone
from engram_cli.client.errors import Conflict, Deadlock, EngramError, Forbidden, LockHeld
from engramd.protocol import Lease
from tests.clustermachines import Machine, deployment_of, running
from tests.conftest import WAIT, wait_until
from tests.helpers.paused_engramd import PAUSE_PAYLOAD
from tests.helpers.tcpproxy import CuttableProxy

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def holder_seen(machine: Machine, resource: str) -> Lease | None:
    with machine.client("observer") as engram:
        return engram.get_lock(resource).lease


def test_a_lease_on_one_machine_excludes_the_others(machines: list[Machine]) -> None:
    a, b, c = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (held,) = alice.acquire_lock("deploy:prod", ttl=30)
        assert held.machine and held.fencing_token > 0
        with pytest.raises(LockHeld, match="alice"):
            bob.acquire_lock("deploy:prod", ttl=30)
        wait_until(lambda: holder_seen(c, "deploy:prod") == held, "c to see alice's lease")
        alice.release_lock(held.lock_id)
        (following,) = bob.acquire_lock("deploy:prod", ttl=30, wait=WAIT)
        assert following.fencing_token > held.fencing_token


def test_lock_run_on_three_machines_never_overlaps(machines: list[Machine],
                                                   tmp_path: Path) -> None:
    counter, log = tmp_path / "counter", tmp_path / "sections"
    counter.write_text("0")
    # The critical section: read, wait, write back one more; and note the fencing
    # token with the wall-clock nanoseconds it began and ended at.
    step = (f'v=$(cat {counter}); s=$(date +%s%N); sleep 0.02; echo $((v+1)) > {counter}; '
            f'echo "$ENGRAM_FENCING_TOKEN $s $(date +%s%N)" >> {log}')
    rounds, per_machine = 4, 2
    loops = [subprocess.Popen(
        ["sh", "-c", f"for i in $(seq {rounds}); do {sys.executable} -m engram_cli lock run "
                     f"counter --ttl 20 -- sh -c '{step}' || exit 1; done"],
        env={**machine.env, "ENGRAM_AGENT": f"cron-{machine.name}"})
        for machine in machines for _ in range(per_machine)]
    for loop in loops:
        assert loop.wait(300) == 0
    total = rounds * per_machine * len(machines)
    assert counter.read_text().strip() == str(total)
    sections = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert len(sections) == total
    tokens = [token for token, _, _ in sections]
    assert len(set(tokens)) == total, "a fencing token was handed out twice"
    for (_, _, ended), (_, began, _) in itertools.pairwise(sections):
        assert began >= ended, "two critical sections overlapped"


def test_a_killed_engramd_s_lease_expires_on_the_servers(machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice:
        (held,) = alice.acquire_lock("job", ttl=2)
    # (alice's connection is gone, but the lease is not bound to it: it stays.)
    a.kill()
    with b.client("bob") as bob:
        (following,) = bob.acquire_lock("job", ttl=30, wait=WAIT)
    assert following.fencing_token > held.fencing_token
    assert following.acquired_at >= held.expires_at


def start_lock_run(machine: Machine, resource: str, ttl: float, here: Path
                   ) -> subprocess.Popen[str]:
    """``lock run`` of a CMD that writes its pid to ``here/pid`` and sleeps."""
    cmd = f"echo $$ > {here}/pid; exec sleep 600"
    return subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", resource, "--ttl", str(ttl),
         "--", "sh", "-c", cmd], env={**machine.env, "ENGRAM_AGENT": "runner"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_holder_process_is_released_by_its_machine_at_once(
        machines: list[Machine], tmp_path: Path) -> None:
    a, b, _ = machines
    runner = start_lock_run(a, "job", ttl=120, here=tmp_path)
    wait_until((tmp_path / "pid").exists, "CMD to start")
    held = holder_seen(a, "job")
    assert held is not None
    runner.send_signal(signal.SIGKILL)
    runner.wait(WAIT)
    with b.client("bob") as bob:
        (following,) = bob.acquire_lock("job", ttl=30, wait=WAIT)  # long before 120 s
    assert following.fencing_token > held.fencing_token
    # (A zombie counts as stopped: its parent may be slow to reap it on a loaded machine.)
    wait_until(lambda: process_gone(int((tmp_path / "pid").read_text())), "CMD to be stopped")


def test_a_waiter_elsewhere_is_granted_once_the_killed_holder_s_group_is_gone(
        machines: list[Machine], tmp_path: Path) -> None:
    from tests.cli.test_lock_run_tree import STUBBORN, living

    a, b, _ = machines
    beats = tmp_path / "beats"
    cmd = f'{sys.executable} -c "$STUBBORN" {beats} & echo $$ > {tmp_path}/pid; wait'
    runner = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", "job", "--ttl", "8", "--",
         "sh", "-c", cmd], env={**a.env, "ENGRAM_AGENT": "runner", "STUBBORN": STUBBORN},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: beats.exists() and (tmp_path / "pid").exists(), "CMD to start")
    held = holder_seen(a, "job")
    assert held is not None and held.pgid == int((tmp_path / "pid").read_text())
    # Only a can stop the processes working under it: b ends the lease neither way.
    with b.client("ops") as ops, pytest.raises(Forbidden, match="break it there"):
        ops.break_lock("job", "stuck")
    with b.client("runner") as same, pytest.raises(Forbidden, match="release it there"):
        same.release_lock(held.lock_id)
    runner.send_signal(signal.SIGKILL)
    runner.wait(WAIT)
    with b.client("bob") as bob:
        (following,) = bob.acquire_lock("job", ttl=30, wait=WAIT)
    assert living(held.pgid) == []
    last = float(beats.read_text().split()[-1])
    assert last < following.acquired_at.timestamp()  # no overlap across machines


def test_waiters_on_every_machine_are_served_first_come_first_served(
        machines: list[Machine]) -> None:
    a, b, c = machines
    with a.client("alice") as alice:
        (held,) = alice.acquire_lock("queue", ttl=30)
        order: list[str] = []
        tokens: list[int] = []

        def wait_on(machine: Machine) -> None:
            with machine.client(f"w-{machine.name}") as engram:
                (lease,) = engram.acquire_lock("queue", ttl=30, wait=30)
                order.append(machine.name)
                tokens.append(lease.fencing_token)
                engram.release_lock(lease.lock_id)

        threads = []
        for machine in (c, b, a, c):
            threads.append(threading.Thread(target=wait_on, args=(machine,)))
            threads[-1].start()
            # In line one after the other: each waiter's ticket is on the servers
            # before the next one asks.
            wanted = len(threads)
            wait_until(lambda wanted=wanted: len(  # type: ignore[misc]
                alice.get_lock("queue").waiters) == wanted, "the waiter to be in line")
        alice.release_lock(held.lock_id)
        for thread in threads:
            thread.join(60)
    assert order == ["c", "b", "a", "c"]
    assert tokens == sorted(tokens) and tokens[0] > held.fencing_token


def test_a_nats_node_killed_while_leases_are_held_and_waited_for(
        env: dict[str, str], scratch: str, tmp_path: Path) -> None:
    # A request may meet the election: on a busy machine it can take seconds.
    patient = {name: {"ENGRAM_CLUSTER_WRITE_TIMEOUT": "20"} for name in ("a", "b")}
    with NatsCluster(str(tmp_path / "nats")) as nats, \
            running(deployment_of(nats, env, scratch, ("a", "b"), **patient)) as (a, b), \
            a.client("alice") as alice, b.client("bob") as bob:
        (first,) = alice.acquire_lock("db", ttl=30)
        granted: list[Lease] = []
        waiter = threading.Thread(target=lambda: granted.extend(
            bob.acquire_lock("db", ttl=30, wait=60)))
        waiter.start()
        wait_until(lambda: len(alice.get_lock("db").waiters) == 1, "bob to wait")
        # The node leading the leases' stream goes: the other two elect a new leader.
        bucket = f"KV_engram_{a.env['ENGRAM_CLUSTER_DEPLOYMENT']}_leases"
        leader = nats.stream_leader(bucket)
        assert leader is not None
        nats.stop(leader, kill=True)
        with a.client("carol") as carol, pytest.raises(LockHeld):
            carol.acquire_lock("db", ttl=30)
        alice.release_lock(first.lock_id)
        waiter.join(60)
        assert len(granted) == 1 and granted[0].fencing_token > first.fencing_token
        (then,) = alice.acquire_lock("other", ttl=30)
        assert then.fencing_token > granted[0].fencing_token


def test_a_machine_cut_off_from_the_cluster_stops_cmd_before_its_lease_ends(
        env: dict[str, str], scratch: str, tmp_path: Path) -> None:
    with NatsCluster(str(tmp_path / "nats")) as nats:
        proxy = CuttableProxy(("127.0.0.1", nats.nodes[0].client_port))
        machines = deployment_of(nats, env, scratch, ("a", "b"),
                                 a={"ENGRAM_CLUSTER_SERVERS": proxy.url})
        with running(machines) as (a, b):
            runner = start_lock_run(a, "job", ttl=6, here=tmp_path)
            wait_until((tmp_path / "pid").exists, "CMD to start")
            cmd = int((tmp_path / "pid").read_text())
            wait_until(lambda: holder_seen(b, "job") is not None, "b to see the lease")
            held = holder_seen(b, "job")
            assert held is not None
            proxy.cut()
            with b.client("bob") as bob:
                (following,) = bob.acquire_lock("job", ttl=30, wait=30)
                # CMD was stopped before the lease could end, and so before this grant.
                assert process_gone(cmd)
            assert following.acquired_at >= held.expires_at
            assert following.fencing_token > held.fencing_token
            _, err = runner.communicate(timeout=WAIT)
            assert runner.returncode != 0
            assert "could not renew" in err


class TwoMachineLeases(RuleBasedStateMachine):
    """Acquire, renew, release, expiry and killed holders across two machines, against
    a model: at most one holder per resource, and every grant's token larger than
    every token before it."""

    machines: ClassVar[list[Machine]] = []
    AGENTS = ("p", "q")

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:8]
        self.clients: dict[tuple[int, str], Client] = {}
        self.held: dict[str, tuple[tuple[int, str], Lease]] = {}
        """Resource -> (which client holds it, its lease), as the model says."""
        self.last_token = 0

    def client(self, machine: int, agent: str) -> Client:
        key = (machine, agent)
        if key not in self.clients:
            self.clients[key] = self.machines[machine].client(agent)
        return self.clients[key]

    def resource(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @rule(machine=st.integers(0, 1), agent=st.sampled_from(AGENTS),
          name=st.sampled_from(("r0", "r1")))
    def acquire(self, machine: int, agent: str, name: str) -> None:
        resource = self.resource(name)
        engram = self.client(machine, agent)
        if resource in self.held:
            with pytest.raises((LockHeld, Conflict)):
                engram.acquire_lock(resource, ttl=30, bind_connection=True)
            return
        (lease,) = engram.acquire_lock(resource, ttl=30, bind_connection=True)
        assert lease.fencing_token > self.last_token
        self.last_token = lease.fencing_token
        self.held[resource] = ((machine, agent), lease)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(sorted(self.held)))
        who, lease = self.held[resource]
        renewed = self.client(*who).renew_lock(lease.lock_id, ttl=30)
        assert renewed.fencing_token == lease.fencing_token
        self.held[resource] = (who, renewed)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(sorted(self.held)))
        who, lease = self.held.pop(resource)
        self.client(*who).release_lock(lease.lock_id)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """The holder stops renewing: the servers end the lease (a ttl of 1 s)."""
        resource = data.draw(st.sampled_from(sorted(self.held)))
        who, lease = self.held.pop(resource)
        self.client(*who).renew_lock(lease.lock_id, ttl=1)
        self.agree(resource)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        """A holder's connection goes: its machine ends what is bound to it."""
        who = data.draw(st.sampled_from(sorted({who for who, _ in self.held.values()})))
        self.clients.pop(who).close()
        for resource in [r for r, (holder, _) in self.held.items() if holder == who]:
            del self.held[resource]

    def agree(self, resource: str) -> None:
        """Wait until both machines see the holder the model says."""
        wanted = self.held.get(resource)
        lock_id = wanted[1].lock_id if wanted else None

        def seen() -> bool:
            return all(getattr(holder_seen(m, resource), "lock_id", None) == lock_id
                       for m in self.machines)

        wait_until(seen, f"both machines to agree on {resource}")

    @invariant()
    def one_holder_everywhere(self) -> None:
        for name in ("r0", "r1"):
            self.agree(self.resource(name))

    def teardown(self) -> None:
        for engram in self.clients.values():
            engram.close()


def test_leases_across_two_machines_follow_the_model(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    with running(deployment_of(nats_cluster, env, scratch, ("a", "b"))) as machines:
        TwoMachineLeases.machines = machines
        run_state_machine_as_test(TwoMachineLeases, settings=settings(
            max_examples=6, stateful_step_count=12, deadline=None,
            suppress_health_check=list(HealthCheck)))


def test_a_fenced_write_is_checked_against_the_cluster_s_token(
        machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (old,) = alice.acquire_lock("report", ttl=30)
        alice.create_unit("notes", "MESSAGE", "while held", fence=("report", old.fencing_token))
        bob.break_lock("report", "taking over")
        (new,) = bob.acquire_lock("report", ttl=30, wait=WAIT)
        # a's watch may not have seen either yet: the check reads the cluster's token.
        with pytest.raises(Conflict, match="stale fence"):
            alice.create_unit("notes", "MESSAGE", "too late",
                              fence=("report", old.fencing_token))
        bob.create_unit("notes", "MESSAGE", "new holder", fence=("report", new.fencing_token))


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("ending", ["broken", "expired"])
def test_a_holder_paused_between_check_and_write_is_refused_once_a_newer_holder_wrote(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster, ending: str) -> None:
    """a's engramd checks a fenced write, then stops (SIGSTOP) before it writes, its view
    of the leases frozen from then on (it still believes the lease held); the lease
    ends (broken from b, or by the servers' TTL) and b's new holder writes with its
    newer token; a resumes. Its write is refused, and the journal, on both machines,
    never shows an older token's write after a newer one's."""
    machines = deployment_of(nats_cluster, env, scratch, ("a", "b"))
    a, b = machines
    a.module = "tests.helpers.paused_engramd"
    with running(machines), a.client("alice") as alice, b.client("bob") as bob:
        (old,) = alice.acquire_lock("report", ttl=60 if ending == "broken" else 2)
        alice.create_unit("notes", "MESSAGE", "while held", fence=("report", old.fencing_token))
        outcome: list[object] = []

        def paused_write() -> None:
            try:
                with a.client("alice") as late:
                    late.create_unit("notes", "MESSAGE", PAUSE_PAYLOAD,
                                     fence=("report", old.fencing_token))
                outcome.append("written")
            except EngramError as exc:
                outcome.append(exc)

        writer = threading.Thread(target=paused_write)
        writer.start()
        assert a.process is not None
        try:
            wait_until(lambda: _stopped(a.process.pid),  # type: ignore[union-attr]
                       "a's engramd to stop between the check and the write")
            if ending == "broken":
                bob.break_lock("report", "taking over")
            (new,) = bob.acquire_lock("report", ttl=30, wait=WAIT)
            assert new.fencing_token > old.fencing_token
            bob.create_unit("notes", "MESSAGE", "new holder",
                            fence=("report", new.fencing_token))
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
            writer.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
        assert "stale fence" in str(outcome[0])
        for machine in machines:
            wait_until(lambda m=machine: "new holder" in payloads_of(m, "notes"),  # type: ignore[misc]
                       f"{machine.name} to apply the new holder's write")
            assert payloads_of(machine, "notes") == ["while held", "new holder"]


def payloads_of(machine: Machine, context: str) -> list[str]:
    with machine.client() as engram:
        return [unit.payload.decode()
                for unit in engram.list_units(context, limit=100).units]


def test_a_lease_broken_on_another_machine_is_pushed_to_its_holder(
        machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (held,) = alice.acquire_lock("deploy", ttl=30)
        bob.break_lock("deploy", "stuck deploy")
        notice = alice.lease_lost(WAIT)
        assert notice is not None and notice.lease.lock_id == held.lock_id
        assert notice.reason == "broken" and notice.by == "bob"


def test_a_break_on_another_machine_ends_only_the_lease_it_names(
        machines: list[Machine]) -> None:
    """Alice's lease, shown on machine b, ends on a; bob takes the resource: the break
    that names alice's lease is refused on b, and bob keeps his."""
    a, b, _ = machines
    with a.client("alice") as alice, a.client("bob") as bob, b.client("ops") as ops:
        (shown,) = alice.acquire_lock("report", ttl=30)
        alice.release_lock(shown.lock_id)
        (now,) = bob.acquire_lock("report", ttl=30)
        with pytest.raises(Conflict, match="no longer held by the lease"):
            ops.break_lock("report", "stuck", lock_id=shown.lock_id)
        assert ops.get_lock("report").lease.lock_id == now.lock_id  # type: ignore[union-attr]
        ops.break_lock("report", "stuck", token=now.fencing_token)
        notice = bob.lease_lost(WAIT)
        assert notice is not None and notice.lease.lock_id == now.lock_id


def live_watch(machine: Machine, *args: str) -> subprocess.Popen[str]:
    """``engram watch --json *args`` on *machine*, once it follows the live flow (lease
    events in cluster mode are not in the journal: only a live watcher gets them)."""
    with machine.client() as engram:
        before = engram.status().stream
    assert before is not None
    watcher = subprocess.Popen([sys.executable, "-m", "engram_cli", "watch", "--json", *args],
                               env=machine.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def following() -> bool:
        with machine.client() as engram:
            stream = engram.status().stream
        return stream is not None and stream.live > before.live

    wait_until(following, f"the watch on {machine.name} to follow the live flow")
    return watcher


def test_lease_changes_on_one_machine_show_in_every_machine_s_watch(
        machines: list[Machine]) -> None:
    a, b, c = machines
    kinds = ("--kind", "lock.acquired", "--kind", "lock.released", "--count", "2")
    watchers = [live_watch(machine, *kinds) for machine in (a, b, c)]
    try:
        with a.client("alice") as alice:
            (held,) = alice.acquire_lock("deploy:prod", ttl=30)
            alice.release_lock(held.lock_id)
        seen = []
        for watcher in watchers:
            out, err = watcher.communicate(timeout=WAIT * 3)
            assert watcher.returncode == 0, err
            seen.append([json.loads(line) for line in out.splitlines()])
    finally:
        for watcher in watchers:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    for events in seen:
        assert [(e["kind"], e["lease"]["lock_id"], e["lease"]["fencing_token"])
                for e in events] == [("lock.acquired", held.lock_id, held.fencing_token),
                                     ("lock.released", held.lock_id, held.fencing_token)]
        assert events[1]["reason"] == "released" and events[1]["by"] == "alice"
        assert events[0]["lease"]["machine"] == held.machine
    # Not in the journal: a watch from the start replays none of them (the first event
    # it shows is the unit written after them).
    with b.client("bob") as bob:
        bob.create_unit("after", "MESSAGE", "written after the lease")
    replay = b.cli("watch", "--json", "--since", "start", "--kind", "lock.acquired",
                   "--kind", "unit.created", "--count", "1")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["kind"] == "unit.created"


def test_a_task_claimed_on_one_machine_is_claimed_for_all(machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        task = alice.add_task("ship it", context_id="work")
        wait_until(lambda: bob.list_tasks(ready=True, contexts=["work"]) != [],
                   "b to see the task")
        claimed = alice.claim_task(task.id)
        assert claimed.claim is not None
        with pytest.raises(LockHeld):
            bob.claim_task(task.id)
        alice.finish_task(task.id)
        wait_until(lambda: bob.get_task(task.id).state == "done", "b to see it done")


def test_a_cluster_that_wants_a_password_gets_it_from_the_urls(
        env: dict[str, str], scratch: str, tmp_path: Path) -> None:
    with NatsCluster(str(tmp_path / "nats"),
                     settings="authorization { user: engram, password: s3cret }") as nats:
        with_password = ",".join(f"nats://engram:s3cret@127.0.0.1:{node.client_port}"
                                 for node in nats.nodes)
        machines = deployment_of(nats, env, scratch, ("a", "b"),
                                 a={"ENGRAM_CLUSTER_SERVERS": with_password},
                                 b={"ENGRAM_CLUSTER_WRITE_TIMEOUT": "1"})
        machines[1].reaches_cluster = False  # no password
        with running(machines) as (a, b):
            with a.client("alice") as alice:
                alice.acquire_lock("deploy", ttl=30)
                alice.create_unit("work", "MESSAGE", "through the password")
            shown = a.cli("cluster", "status", "--json")  # (the trial saw the password)
            assert shown.returncode == 0 and "engram:***@127.0.0.1" in shown.stdout
            assert "s3cret" not in shown.stdout + a.cli("status", "--json").stdout
            refused = b.cli("lock", "acquire", "deploy", "--no-wait")
            assert refused.returncode != 0, refused.stderr
            assert "the cluster refuses this machine" in refused.stderr, refused.stderr
            assert "credentials" in refused.stderr, refused.stderr


def test_a_deadlock_across_machines_is_refused(machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        alice.acquire_lock("x", ttl=30)
        (y,) = bob.acquire_lock("y", ttl=30)

        def wait_for_y() -> None:
            with contextlib.suppress(EngramError):
                alice.acquire_lock("y", ttl=30, wait=20)

        waiting = threading.Thread(target=wait_for_y)
        waiting.start()
        wait_until(lambda: len(bob.get_lock("y").waiters) == 1, "alice's wait to show on b")
        with pytest.raises(Deadlock, match="alice"):
            bob.acquire_lock("x", ttl=30, wait=20)
        held = holder_seen(a, "x")
        assert held is not None
        assert f"machine\t{held.machine}" in b.cli("lock", "show", "x").stdout
        bob.release_lock(y.lock_id)
        waiting.join(30)


def test_a_lease_not_renewed_is_lost_at_its_deadline_and_freed_by_the_servers(
        machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (held,) = alice.acquire_lock("short", ttl=1)
        notice = alice.lease_lost(WAIT)
        assert notice is not None and notice.reason == "expired"
        assert notice.lease.lock_id == held.lock_id
        (following,) = bob.acquire_lock("short", ttl=30, wait=WAIT)
        assert following.fencing_token > held.fencing_token
        assert following.acquired_at >= held.expires_at


# -- paths, directories, globs and shared leases across machines -----------------------


def test_a_directory_a_file_in_it_and_a_glob_exclude_each_other_across_machines(
        machines: list[Machine]) -> None:
    a, b, c = machines
    root = f"file:github.com/t/{uuid.uuid4().hex[:8]}:"
    with a.client("alice") as alice, b.client("bob") as bob, c.client("carol") as carol:
        (directory,) = alice.acquire_lock(root + "src/", ttl=30)
        with pytest.raises(LockHeld, match="alice"):
            bob.acquire_lock(root + "src/app.py", ttl=30)
        with pytest.raises(LockHeld, match="alice"):
            carol.acquire_lock(root + "src/**/*.py", ttl=30)
        (elsewhere,) = bob.acquire_lock(root + "docs/a.md", ttl=30)  # not in src/
        (other_repo,) = carol.acquire_lock("file:github.com/t/other:src/app.py", ttl=30)
        alice.release_lock(directory.lock_id)
        (glob,) = carol.acquire_lock(root + "src/**/*.py", ttl=30, wait=WAIT)
        with pytest.raises(LockHeld, match="carol"):
            alice.acquire_lock(root + "src/lib/x.py", ttl=30)
        (c_file,) = alice.acquire_lock(root + "src/lib/x.c", ttl=30)  # no .py: free
        assert glob.fencing_token > directory.fencing_token
        for held, who in ((elsewhere, bob), (other_repo, carol), (glob, carol),
                          (c_file, alice)):
            who.release_lock(held.lock_id)


def test_shared_readers_on_two_machines_and_a_waiting_writer(machines: list[Machine]) -> None:
    a, b, c = machines
    root = f"file:github.com/t/{uuid.uuid4().hex[:8]}:"
    with a.client("r1") as r1, b.client("r2") as r2, c.client("w") as writer, \
            c.client("r3") as r3:
        (one,) = r1.acquire_lock(root + "data/", ttl=30, shared=True)
        (two,) = r2.acquire_lock(root + "data/", ttl=30, shared=True)  # readers coexist
        granted: list[Lease] = []
        waiting = threading.Thread(target=lambda: granted.extend(
            writer.acquire_lock(root + "data/table.csv", ttl=30, wait=60)))
        waiting.start()
        wait_until(lambda: len(r1.get_lock(root + "data/table.csv").waiters) == 1,
                   "the writer to be in line")
        # A reader that comes after the waiting writer waits behind it: no starvation.
        with pytest.raises(LockHeld):
            r3.acquire_lock(root + "data/", ttl=30, shared=True)
        r1.release_lock(one.lock_id)
        r2.release_lock(two.lock_id)
        waiting.join(60)
        assert len(granted) == 1 and granted[0].fencing_token > two.fencing_token
        writer.release_lock(granted[0].lock_id)


def test_conflicting_leases_written_at_once_on_two_machines_are_never_both_kept(
        machines: list[Machine], tmp_path: Path) -> None:
    """Two machines race, over and over, for a directory and files in it (and readers
    for the directory), half of the racers by trying again and again rather than
    waiting in line (so their writes meet on the servers): whoever holds notes its
    span; no two conflicting spans overlap."""
    a, b, _ = machines
    root = f"file:/race/{uuid.uuid4().hex[:8]}/"
    wanted = [(root + "d/", False), (root + "d/f", False), (root + "d/", True),
              (root + "d/*", False)]
    spans: list[tuple[str, bool, float, float]] = []
    lock = threading.Lock()

    def racer(machine: Machine, agent: str, picks: list[int], patient: bool) -> None:
        import time

        with machine.client(agent) as engram:
            for pick in picks:
                resource, shared = wanted[pick]
                while True:
                    try:
                        (lease,) = engram.acquire_lock(resource, ttl=30, shared=shared,
                                                       wait=60 if patient else 0)
                        break
                    except LockHeld:
                        time.sleep(0.001)
                began = time.monotonic()
                time.sleep(0.005)
                ended = time.monotonic()
                engram.release_lock(lease.lock_id)
                with lock:
                    spans.append((resource, shared, began, ended))

    threads = [threading.Thread(target=racer, args=(
        machine, f"{machine.name}{n}", [(n + i) % len(wanted) for i in range(12)], n == 0))
        for machine in (a, b) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert len(spans) == 6 * 12
    from engramd.protocol import resources as names

    for (r1, s1, b1, e1), (r2, s2, b2, e2) in itertools.combinations(spans, 2):
        if names.conflicts(r1, r2, a_shared=s1, b_shared=s2):
            assert e1 <= b2 or e2 <= b1, f"{r1} and {r2} were held at once"


def _repository(where: Path, remote: str | None = None) -> Path:
    where.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(where)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(where), "remote", "add", "origin", remote], check=True)
    return where


def test_paths_through_the_cli_on_three_machines(machines: list[Machine],
                                                 tmp_path: Path) -> None:
    """The two-repository case, a directory and a file, a glob and files, shared readers
    with a waiting writer: the real engram on three machines of one cluster."""
    a, b, c = machines
    seven = _repository(tmp_path / "repo7")
    eight = _repository(tmp_path / "repo8", "git@github.com:bob/eight.git")
    clone = _repository(tmp_path / "clone", "https://github.com/bob/eight")

    def lock(machine: Machine, *args: str) -> subprocess.CompletedProcess[str]:
        return machine.cli("lock", "acquire", "--ttl", "60", *args)

    # Two repositories with src/app.py each: no collision; a clone of one remote on
    # another machine is the same repository.
    assert lock(a, "--path", f"{seven}/src/app.py").returncode == 0
    assert lock(b, "-n", "--path", f"{eight}/src/app.py").returncode == 0
    same = lock(c, "-n", "--path", f"{clone}/src/app.py")
    assert same.returncode == 4 and "file:github.com/bob/eight:src/app.py" in same.stderr
    # A directory and a file in it.
    assert lock(a, "--path", f"{seven}/docs/").returncode == 0
    inside = lock(b, "-n", "--path", f"{seven}/docs/index.md")
    assert inside.returncode == 4 and f"file:{seven}/docs/" in inside.stderr
    # A glob and files.
    assert lock(b, "--path", f"{eight}/lib/**/*.py").returncode == 0
    assert lock(c, "-n", "--path", f"{clone}/lib/x/y.py").returncode == 4
    assert lock(c, "-n", "--path", f"{clone}/lib/x/y.c").returncode == 0
    # Shared readers on two machines, a writer waiting on the third, a late reader.
    for reader in (a, b):
        assert lock(reader, "--shared", "--path", f"{seven}/data/").returncode == 0
    writer = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", "--path", f"{seven}/data/t.csv",
         "--wait", "60", "--", "sh", "-c", "echo wrote"], env=c.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    table = f"file:{seven}/data/t.csv"
    with a.client("observer") as observer:
        wait_until(lambda: len(observer.get_lock(table).waiters) == 1, "the writer in line")
        late = lock(a, "-n", "--shared", "--path", f"{seven}/data/")
        assert late.returncode == 4 and "waiting ahead" in late.stderr
        readers = observer.get_lock(f"file:{seven}/data/").leases
        assert len(readers) == 2 and all(lease.shared for lease in readers)
        # (The readers' commands have exited; their leases last until broken.)
        done = b.cli("lock", "break", "--path", f"{seven}/data/", "--reason", "read")
        assert done.returncode == 0, done.stderr  # every shared lease on it
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out == "wrote\n", err


def test_the_lease_history_is_empty_in_cluster_mode(machines: list[Machine]) -> None:
    """Lease changes are not in the cluster's journal (§9.1): ``lock.history`` answers an
    empty page on every machine (the console's Timeline then draws what it sees live),
    while the units around them are read past as on one machine."""
    a, b, _ = machines
    with a.client("alice") as alice, b.client("bob") as bob:
        (held,) = alice.acquire_lock("history", ttl=30)
        alice.release_lock(held.lock_id)
        unit = alice.create_unit("history", "MESSAGE", "in the journal")
        wait_until(lambda: bool(bob.get_units([unit.id]).units), "the unit on machine b")
        for client in (alice, bob):
            page = client.lock_history()
            assert (page.events, page.next_cursor) == ([], None)

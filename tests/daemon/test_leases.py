"""Leases through the real daemon: exclusion, order, expiry, death, restart, fencing."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from engram_cli.client import Client, requests
from engram_cli.client.errors import (
    BadRequest,
    Conflict,
    Deadlock,
    Forbidden,
    LockHeld,
    NotFound,
    Timeout,
    TooLarge,
)
from engramd.config import DaemonConfig
from engramd.protocol import Heartbeat, Lease
from tests.conftest import (
    WAIT,
    DaemonProcess,
    RawConnection,
    ThreadedDaemon,
    connect,
    make_config,
    start_threaded,
    wait_until,
)

ROOT = Path(__file__).parent.parent.parent


def waiters(engram: Client, resource: str) -> list[str]:
    return [w.agent for w in engram.get_lock(resource).waiters]


def test_mutual_exclusion_keeps_the_count_exact(engramd: DaemonProcess, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers = [subprocess.Popen([sys.executable, "-m", "tests.helpers.counter_worker",
                                 engramd.socket, f"w{n}", str(counter), "200"],
                                env=engramd.env, cwd=ROOT) for n in range(6)]
    script = (f"v=$(cat {counter}); sleep 0.001; echo $((v+1)) > {counter}")
    runners = [subprocess.Popen(
        ["sh", "-c", f"for i in $(seq 20); do {sys.executable} -m engram_cli lock run "
                     f"counter --wait 60 -- sh -c '{script}' || exit 1; done"],
        env={**engramd.env, "ENGRAM_AGENT": f"sh{n}"}) for n in range(2)]
    for process in workers + runners:
        assert process.wait(300) == 0
    assert int(counter.read_text()) == 6 * 200 + 2 * 20


def test_waiters_are_served_first_come_first_served(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    order: list[str] = []
    with connect(config) as holder:
        (lease,) = holder.acquire_lock("queue", ttl=30)

        def wait_for(agent: str) -> None:
            with connect(config, agent) as engram:
                (mine,) = engram.acquire_lock("queue", ttl=30, wait=30)
                order.append(agent)
                engram.release_lock(mine.lock_id)

        threads = []
        for agent in ("b", "c", "d"):
            thread = threading.Thread(target=wait_for, args=(agent,))
            thread.start()
            threads.append(thread)
            wait_until(lambda agent=agent: agent in waiters(holder, "queue"), f"{agent} in line")
        assert waiters(holder, "queue") == ["b", "c", "d"]
        holder.release_lock(lease.lock_id)
        for thread in threads:
            thread.join(WAIT)
    assert order == ["b", "c", "d"]


def test_expiry_hands_the_resource_to_the_next_waiter(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as first, connect(config, "bob") as second:
        (old,) = first.acquire_lock("short", ttl=0.3)
        (new,) = second.acquire_lock("short", ttl=5, wait=10)
        assert new.acquired_at >= old.expires_at
        assert new.fencing_token > old.fencing_token
        with pytest.raises(NotFound, match="expired"):
            first.renew_lock(old.lock_id)
        with pytest.raises(NotFound):
            first.release_lock(old.lock_id)


def test_a_lost_lease_is_told_to_its_holder(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as holder, connect(config, "ops") as ops:
        holder.acquire_lock("doomed", ttl=30)
        ops.break_lock("doomed", "stuck deploy")
        notice = holder.lease_lost(WAIT)
        assert notice is not None and notice.reason == "broken" and notice.by == "ops"
        holder.acquire_lock("brief", ttl=0.2)
        notice = holder.lease_lost(WAIT)
        assert notice is not None and notice.reason == "expired"


def test_a_break_names_the_lease_it_was_shown(threaded_daemon: ThreadedDaemon) -> None:
    """A break given the lease's lock id (or fencing token) ends that lease only: once its
    holder has let go and the next in line holds the resource, nothing is broken."""
    config = threaded_daemon.config
    with connect(config) as alice, connect(config, "bob") as bob, \
            connect(config, "ops") as ops:
        (shown,) = alice.acquire_lock("deploy", ttl=30)
        alice.release_lock(shown.lock_id)
        (now,) = bob.acquire_lock("deploy", ttl=30)
        with pytest.raises(Conflict, match="no longer held by the lease with lock id"):
            ops.break_lock("deploy", "stuck", lock_id=shown.lock_id)
        with pytest.raises(Conflict, match=f"fencing token {shown.fencing_token}"):
            ops.break_lock("deploy", "stuck", token=shown.fencing_token)
        assert ops.get_lock("deploy").lease.lock_id == now.lock_id  # type: ignore[union-attr]
        for blank in ("", "   ", "\t\n", "\u200b", "\ufeff\u00ad", "\u202e", "\u0001"):
            with pytest.raises(BadRequest, match="reason"):
                ops.break_lock("deploy", blank, lock_id=now.lock_id)
        ops.break_lock("deploy", "stuck", lock_id=now.lock_id, token=now.fencing_token)
        assert ops.get_lock("deploy").lease is None
        # Shared: the one named ends, the others hold on.
        (one,) = alice.acquire_lock("report", ttl=30, shared=True)
        (two,) = bob.acquire_lock("report", ttl=30, shared=True)
        ops.break_lock("report", "this one hung", lock_id=two.lock_id)
        assert [lease.lock_id for lease in ops.get_lock("report").leases] == [one.lock_id]


def holder_process(socket_path: str, *, bind: bool) -> subprocess.Popen[str]:
    code = ("import sys, time; from engram_cli.client.blocking import Client; "
            f"c = Client({socket_path!r}, agent_id='victim', autostart=False); "
            f"c.acquire_lock('held', ttl=30, bind_connection={bind}); "
            "print('held', flush=True); time.sleep(300)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


@pytest.mark.slow
def test_killed_holder_frees_a_connection_bound_lease_at_once(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    victim = holder_process(config.socket, bind=True)
    victim.send_signal(signal.SIGKILL)
    victim.wait(WAIT)
    with connect(config, "next") as engram:
        (lease,) = engram.acquire_lock("held", ttl=30, wait=10)  # well before the 30 s ttl
    assert lease.holder == "next"


@pytest.mark.slow
def test_killed_holder_of_a_plain_lease_keeps_it_until_expiry(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    victim = holder_process(config.socket, bind=False)
    victim.send_signal(signal.SIGKILL)
    victim.wait(WAIT)
    with connect(config, "next") as engram:
        with pytest.raises(Timeout, match="held by victim"):
            engram.acquire_lock("held", wait=0.3)
        assert engram.get_lock("held").lease.holder == "victim"  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_pid_bound_lease_ends_with_its_process(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        with connect(config, "script") as engram:
            engram.acquire_lock("pidfile", ttl=60, pid=sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(WAIT)
    with connect(config, "next") as engram:
        (lease,) = engram.acquire_lock("pidfile", wait=10)
    assert lease.holder == "next"


def test_restart_keeps_leases_holders_and_rising_tokens(env: dict[str, str]) -> None:
    config = make_config(env)
    with start_threaded(config), connect(config) as engram:
        (kept,) = engram.acquire_lock("survivor", ttl=600)
    with start_threaded(config), connect(config, "bob") as bob:
        state = bob.get_lock("survivor")
        assert state.lease == kept
        with pytest.raises(LockHeld, match="held by alice"):
            bob.acquire_lock("survivor")
        (other,) = bob.acquire_lock("another")
        assert other.fencing_token > kept.fencing_token
    with start_threaded(config), connect(config) as engram:
        engram.release_lock(kept.lock_id)


def test_opposite_orders_never_deadlock(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    done: list[int] = []

    def loop(agent: str, resources: list[str]) -> None:
        with connect(config, agent) as engram:
            for _ in range(50):
                leases = engram.acquire_lock(resources, ttl=30, wait=30)
                assert sorted(lease.resource for lease in leases) == ["a", "b"]
                for lease in leases:
                    engram.release_lock(lease.lock_id)
            done.append(1)

    threads = [threading.Thread(target=loop, args=("x", ["a", "b"])),
               threading.Thread(target=loop, args=("y", ["b", "a"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert done == [1, 1]


def test_a_wait_that_closes_a_cycle_is_refused(threaded_daemon: ThreadedDaemon) -> None:
    """The wait-for graph is drawn between sessions: here A is one process on two
    connections (its leases bound to it), so its two requests are one holder."""
    config = threaded_daemon.config
    me = os.getpid()
    with connect(config, "A") as a, connect(config, "B") as b:
        (x,) = a.acquire_lock("x", ttl=30, pid=me)
        b.acquire_lock("y", ttl=30)

        def a_waits() -> None:
            with connect(config, "A") as again, pytest.raises(Timeout):
                again.acquire_lock("y", wait=2, pid=me)

        thread = threading.Thread(target=a_waits)
        thread.start()
        wait_until(lambda: waiters(b, "y") == ["A"], "A waiting for y")
        with pytest.raises(Deadlock, match=fr"B \(pid {me}\) waits for x held by A \(pid {me}\), "
                                           fr"then A \(pid {me}\) waits for y held by B"):
            b.acquire_lock("x", wait=30)
        thread.join(WAIT)
        a.release_lock(x.lock_id)


def test_two_sessions_of_one_agent_wait_for_each_other_without_deadlock(
        threaded_daemon: ThreadedDaemon) -> None:
    """Two connections of A are two holders: A's second one waiting for y does not
    make the first one wait, so B waiting for x closes no cycle."""
    config = threaded_daemon.config
    with connect(config, "A") as a, connect(config, "B") as b, connect(config, "A") as again:
        a.acquire_lock("x", ttl=30)
        (y,) = b.acquire_lock("y", ttl=30)
        thread = threading.Thread(target=lambda: again.acquire_lock("y", wait=WAIT))
        thread.start()
        wait_until(lambda: waiters(a, "y") == ["A"], "A's second session waiting for y")
        with pytest.raises(Timeout, match=r"x is held by A \(pid \d+\)"):
            b.acquire_lock("x", wait=0.2)
        b.release_lock(y.lock_id)
        thread.join(WAIT)
        assert again.get_lock("y").lease.session != a.get_lock("x").lease.session  # type: ignore[union-attr]


@pytest.mark.parametrize("call, error, message", [
    (lambda c: c.acquire_lock(""), BadRequest, "resource is 1 to 1024 bytes"),
    (lambda c: c.acquire_lock("r" * 1025), BadRequest, "resource is 1 to 1024 bytes"),
    (lambda c: c.acquire_lock("r", ttl=-1), BadRequest, "ttl must be at least 0.1"),
    (lambda c: c.acquire_lock("r", ttl=10**6), BadRequest, "at most 3600"),
    (lambda c: c.acquire_lock("r", wait=-1), BadRequest, "wait must be"),
    (lambda c: c.release_lock("no-such-id"), NotFound, "no lease with lock id"),
    (lambda c: c.renew_lock("no-such-id"), NotFound, "no lease with lock id"),
    (lambda c: c.break_lock("free", "why"), NotFound, "is not held"),
])
def test_bad_lock_requests_get_clear_errors(threaded_daemon: ThreadedDaemon, call,  # type: ignore[no-untyped-def]
                                            error: type[Exception], message: str) -> None:
    with connect(threaded_daemon.config) as engram:
        with pytest.raises(error, match=message):
            call(engram)
        engram.ping()


@pytest.mark.parametrize("ttl", [1e-300, 0.0999, 0.0, -1.0, math.nan, math.inf, 1e300])
def test_a_ttl_no_lease_can_live_by_is_refused_by_every_request_that_takes_one(
        threaded_daemon: ThreadedDaemon, ttl: float) -> None:
    """A lease that expires as it is granted (``--ttl 1e-300``) was granted, and ``lock
    run`` lost it at once (exit 6): acquire, renew and claim refuse it alike, and what
    was held before is as it was."""
    with connect(threaded_daemon.config) as engram:
        (held,) = engram.acquire_lock("kept", ttl=60)
        task = engram.add_task("brief")
        for ask in (lambda: engram.acquire_lock("brief", ttl=ttl),
                    lambda: engram.renew_lock(held.lock_id, ttl=ttl),
                    lambda: engram.claim_task(task.id, ttl=ttl)):
            with pytest.raises(BadRequest, match=r"ttl must be at least 0\.1 and at most 3600"):
                ask()
        assert engram.get_lock("brief").lease is None
        assert engram.get_lock("kept").lease == held
        assert engram.get_task(task.id).state == "open"
        (shortest,) = engram.acquire_lock("brief", ttl=0.1)
        assert shortest.ttl == 0.1


def test_someone_elses_lock_id_is_refused(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as alice, connect(threaded_daemon.config, "eve") as eve:
        (lease,) = alice.acquire_lock("mine")
        with pytest.raises(Forbidden, match="held by alice"):
            eve.release_lock(lease.lock_id)
        with pytest.raises(Forbidden):
            eve.renew_lock(lease.lock_id)


def test_asking_again_in_the_same_session_is_a_conflict(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        (lease,) = engram.acquire_lock("twice")
        with pytest.raises(Conflict, match="this connection already holds twice"):
            engram.acquire_lock(["other", "twice"], wait=5)
        renewed = engram.renew_lock(lease.lock_id, ttl=120)
        assert renewed.ttl == 120 and renewed.expires_at > lease.expires_at
        assert renewed.fencing_token == lease.fencing_token
        engram.acquire_lock("mine", pid=os.getpid())
        with connect(threaded_daemon.config) as same_process, \
                pytest.raises(Conflict, match=f"process {os.getpid()} already holds mine"):
            same_process.acquire_lock("mine", pid=os.getpid())


def test_another_session_of_the_same_agent_waits_in_line(threaded_daemon: ThreadedDaemon
                                                         ) -> None:
    config = threaded_daemon.config
    with connect(config) as first, connect(config) as second:
        (lease,) = first.acquire_lock("shared", ttl=30)
        assert lease.session.startswith("conn:") and lease.holder_pid == os.getpid()
        with pytest.raises(LockHeld, match=fr"shared is held by alice \(pid {os.getpid()}\)"):
            second.acquire_lock("shared")
        granted: list[Lease] = []
        thread = threading.Thread(target=lambda: granted.extend(
            second.acquire_lock("shared", ttl=30, wait=WAIT)))
        thread.start()
        wait_until(lambda: waiters(first, "shared") == ["alice"], "the second session in line")
        first.release_lock(lease.lock_id)
        thread.join(WAIT)
        assert granted[0].fencing_token > lease.fencing_token
        assert granted[0].session != lease.session


def test_release_and_renew_check_the_resource_in_the_same_request(
        threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        (lease,) = engram.acquire_lock("right", ttl=30)
        for call in (lambda: engram.release_lock(lease.lock_id, resource="wrong"),
                     lambda: engram.renew_lock(lease.lock_id, resource="wrong")):
            with pytest.raises(NotFound, match=r"wrong has no lease with lock id .* a lease on "
                                               r"right"):
                call()
        assert engram.get_lock("right").lease == lease  # neither released nor renewed
        engram.renew_lock(lease.lock_id, resource="right")
        engram.release_lock(lease.lock_id, resource="right")
        assert engram.get_lock("right").lease is None


def test_a_later_connection_releases_by_lock_id(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        (lease,) = engram.acquire_lock("handed", ttl=30)
    with connect(threaded_daemon.config) as later:
        later.release_lock(lease.lock_id, resource="handed")
        assert later.get_lock("handed").lease is None


def test_renewing_from_a_new_connection_adopts_an_orphaned_lease(
        threaded_daemon: ThreadedDaemon) -> None:
    """After a reconnect, the renewing connection is told when the lease is lost."""
    config = threaded_daemon.config
    with connect(config) as engram:
        (lease,) = engram.acquire_lock("orphan", ttl=30)
    with connect(config) as adopter, connect(config, "ops") as ops:
        adopted = adopter.renew_lock(lease.lock_id)
        assert adopted.session != lease.session and adopted.fencing_token == lease.fencing_token
        ops.break_lock("orphan", "testing")
        notice = adopter.lease_lost(WAIT)
        assert notice is not None and notice.lease.lock_id == lease.lock_id


def test_waiting_for_good_is_granted_when_the_holder_leaves(threaded_daemon: ThreadedDaemon
                                                           ) -> None:
    config = threaded_daemon.config
    with connect(config) as holder, connect(config, "bob") as bob:
        (lease,) = holder.acquire_lock("forever", ttl=30)
        granted: list[Lease] = []
        thread = threading.Thread(target=lambda: granted.extend(
            bob.acquire_lock("forever", wait=None)))
        thread.start()
        wait_until(lambda: waiters(holder, "forever") == ["bob"], "bob in line")
        holder.release_lock(lease.lock_id)
        thread.join(WAIT)
    assert granted[0].holder == "bob"


def test_leases_per_agent_are_limited(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_leases_per_agent": "2"})
    with start_threaded(config), connect(config) as engram:
        engram.acquire_lock(["a", "b"])
        with pytest.raises(TooLarge, match="more than 2 leases"):
            engram.acquire_lock("c")


def test_unit_writes_are_fenced_by_the_current_token(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as old, connect(config, "new") as new:
        (stale,) = old.acquire_lock("repo/file", ttl=0.2)
        (fresh,) = new.acquire_lock("repo/file", ttl=30, wait=10)
        with pytest.raises(Conflict, match=f"held with token {fresh.fencing_token}"):
            old.create_unit("fenced", "FILE_CHANGE", "late", fence=("repo/file",
                                                                    stale.fencing_token))
        unit = new.create_unit("fenced", "FILE_CHANGE", "ok",
                               fence=("repo/file", fresh.fencing_token))
        assert unit.payload == b"ok"


def test_every_grant_release_and_expiry_is_on_the_stream(threaded_daemon: ThreadedDaemon
                                                         ) -> None:
    with connect(threaded_daemon.config) as engram:
        subscription = engram.subscribe(kinds=["lock.acquired", "lock.released",
                                               "lock.expired"])
        (lease,) = engram.acquire_lock("watched", ttl=30)
        engram.release_lock(lease.lock_id)
        engram.acquire_lock("watched", ttl=0.1)
        kinds = []
        for item in subscription:
            if not isinstance(item, Heartbeat):
                kinds.append(type(item).__struct_config__.tag)
                assert isinstance(item.lease, Lease)  # type: ignore[attr-defined]
            if len(kinds) == 4:
                break
    assert kinds == ["lock.acquired", "lock.released", "lock.acquired", "lock.expired"]


def test_lock_run_gives_cmd_its_token_and_passes_its_status(engramd: DaemonProcess) -> None:
    env = {**engramd.env, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "engram_cli", "lock", "run", "deploy:prod", "--ttl", "5", "--",
         "sh", "-c", 'echo "$ENGRAM_FENCING_TOKEN $ENGRAM_FENCE"; '
                     'engram unit create -c d -p deployed >/dev/null && exit 7'],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 7, result.stderr
    token, fence = result.stdout.split()
    assert fence == f"deploy:prod:{token}"
    with connect(engramd.socket) as engram:
        assert engram.get_lock("deploy:prod").lease is None
        assert [u.payload for u in engram.list_units("d").units] == [b"deployed"]


def test_lock_run_stops_cmd_when_its_lease_is_broken(engramd: DaemonProcess) -> None:
    runner = subprocess.Popen([sys.executable, "-m", "engram_cli", "lock", "run", "job",
                               "--ttl", "30", "--", "sleep", "300"], env=engramd.env,
                              stderr=subprocess.PIPE, text=True)
    with connect(engramd.socket, "ops") as ops:
        wait_until(lambda: ops.get_lock("job").lease is not None, "the lease")
        ops.break_lock("job", "taking over")
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 6
    assert "lease on job broken (by ops)" in err


def lock_cli(engramd: DaemonProcess, *args: str, agent: str = "tester",
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engram_cli", "lock", *args],
                          env={**engramd.env, "ENGRAM_AGENT": agent},
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_lock_cli_exit_codes(engramd: DaemonProcess) -> None:
    def cli(*args: str, agent: str = "tester") -> subprocess.CompletedProcess[str]:
        return lock_cli(engramd, *args, agent=agent)

    lock_id = cli("acquire", "res").stdout.strip()
    for flag in (["-n"], ["--no-wait"], ["--wait", "0"]):
        for agent in ("bob", "tester"):  # another process of tester is another holder
            held = cli("acquire", "res", *flag, agent=agent)
            assert held.returncode == 4, held.stderr
            assert re.search(r"held by tester \(pid \d+\)", held.stderr), held.stderr
    waited = cli("acquire", "res", "--wait", "0.2", agent="bob")
    assert waited.returncode == 5
    assert len(waited.stderr.strip().splitlines()) == 1
    listed = cli("list").stdout.split("\t")
    assert listed[:2] == ["res", "tester"]
    for command in ("release", "renew"):
        wrong = cli(command, "other", "--lock-id", lock_id)
        assert wrong.returncode == 3, wrong.stderr
        assert wrong.stderr.strip() == (f"engram: error: other has no lease with lock id "
                                        f"{lock_id} (that lock id is a lease on res)")
    assert cli("list").stdout.split("\t")[:2] == ["res", "tester"]  # still held
    assert cli("release", "res", "--lock-id", lock_id).returncode == 0
    assert cli("release", "res", "--lock-id", lock_id).returncode == 3
    assert cli("acquire", "", agent="bob").returncode == 2  # bad_request is a usage error
    assert cli("acquire", "res", "-n", "--wait", "5").returncode == 2


def test_lock_acquire_waits_by_default(engramd: DaemonProcess) -> None:
    with connect(engramd.socket) as holder:
        (lease,) = holder.acquire_lock("queue/cli", ttl=30)
        waiter = subprocess.Popen([sys.executable, "-m", "engram_cli", "lock", "acquire",
                                   "queue/cli"], env={**engramd.env, "ENGRAM_AGENT": "alice"},
                                  stdout=subprocess.PIPE, text=True)
        wait_until(lambda: waiters(holder, "queue/cli") == ["alice"], "the CLI in line")
        holder.release_lock(lease.lock_id)
        out, _ = waiter.communicate(timeout=WAIT)
        assert waiter.returncode == 0
        assert holder.get_lock("queue/cli").lease.lock_id == out.strip()  # type: ignore[union-attr]


def test_watch_shows_lock_events(engramd: DaemonProcess) -> None:
    with connect(engramd.socket) as engram:
        (lease,) = engram.acquire_lock("shown", ttl=30)
        engram.release_lock(lease.lock_id)
    result = subprocess.run([sys.executable, "-m", "engram_cli", "watch", "--since", "start",
                             "--count", "2"], env=engramd.env, capture_output=True, text=True,
                            timeout=30, check=False)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[2] for row in rows] == ["lock.acquired", "lock.released"]
    assert rows[0][4] == f"shown acquired by alice (token {lease.fencing_token}, ttl 30s)"
    assert rows[1][4] == "shown released by alice: released"


@pytest.mark.slow
def test_a_waiter_that_goes_away_leaves_the_line(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    code = ("from engram_cli.client.blocking import Client; "
            f"c = Client({config.socket!r}, agent_id='quitter', autostart=False); "
            "c.acquire_lock('line', wait=300)")
    with connect(config) as holder:
        (lease,) = holder.acquire_lock("line", ttl=60)
        quitter = subprocess.Popen([sys.executable, "-c", code])
        wait_until(lambda: waiters(holder, "line") == ["quitter"], "the quitter in line")
        quitter.send_signal(signal.SIGKILL)
        quitter.wait(WAIT)
        wait_until(lambda: waiters(holder, "line") == [], "the line to forget it")
        holder.release_lock(lease.lock_id)
    with connect(config, "next") as engram:
        (mine,) = engram.acquire_lock("line", wait=5)
    assert mine.holder == "next"


def test_status_counts_commits_subscribers_and_leases(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        engram.create_units([requests.draft("s", "MESSAGE", "x")] * 3)
        engram.subscribe()
        engram.acquire_lock("counted")
        status = engram.status()
    assert status.journal is not None and status.stream is not None
    assert status.journal.commit_batches >= 2
    assert status.journal.commit_entries >= status.journal.commit_batches
    assert status.journal.fsync_seconds > 0
    assert status.stream.subscribers == 1 and status.stream.leases_held == 1
    assert status.stream.leases_granted == 1 and status.stream.published >= 5


@pytest.mark.parametrize("shared", [False, True])
def test_a_wait_behind_a_waiter_that_waits_for_you_is_a_deadlock(
        engramd: DaemonProcess, tmp_path: Path, shared: bool) -> None:
    """S1 holds e3/a.py; W waits for e3/ behind it; S1 asking for e3/b.py would queue
    behind W (first come, first served), which waits for S1: refused at once, not a
    timeout. The same when S1's leases are shared: W's exclusive request is ahead."""
    where = f"file:{tmp_path}/e3/"
    with connect(engramd.socket, "s1") as s1, connect(engramd.socket, "w") as w:
        (held,) = s1.acquire_lock(where + "a.py", ttl=60, shared=shared)
        thread = threading.Thread(target=lambda: w.acquire_lock(where, ttl=60, wait=WAIT))
        thread.start()
        wait_until(lambda: waiters(s1, where) == ["w"], "w waiting for e3/")
        with pytest.raises(Deadlock, match=r"s1 \(pid \d+\) waits for .*e3/b\.py behind w "
                                           r"\(pid \d+\), waiting ahead in line for .*e3/, "
                                           r"then w \(pid \d+\) waits for .*e3/ held by s1"):
            s1.acquire_lock(where + "b.py", ttl=60, wait=5, shared=shared)
        s1.release_lock(held.lock_id)
        thread.join(WAIT)
        assert w.get_lock(where).lease is not None


def test_a_lease_is_bound_only_to_a_running_process_of_the_caller_but_init(
        engramd: DaemonProcess) -> None:
    from tests.conftest import run_cli

    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid, why in (("1", "pid 1 (init) never exits"), ("2", "is a kernel thread"),
                     (str(gone.pid), "is not running")):
        refused = run_cli(engramd.env, "lock", "acquire", "deploy:prod", "--pid", pid)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and why in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    taken = run_cli(engramd.env, "lock", "acquire", "deploy:prod", "--pid", str(os.getpid()))
    assert taken.returncode == 0, taken.stderr


def test_another_users_process_is_refused_unless_the_caller_is_root() -> None:
    from engramd.grants import check_pid
    from engramd.protocol import BadRequest

    mine = os.getpid()
    check_pid(mine, os.getuid())
    check_pid(mine, 0)  # root may name any process
    stranger = os.getuid() + 4242
    with pytest.raises(BadRequest, match=fr"process {mine} is another user's"):
        check_pid(mine, stranger)


def test_a_refusal_for_waiters_ahead_names_them(engramd: DaemonProcess) -> None:
    from tests.conftest import run_cli

    with connect(engramd.socket, "reader") as reader, \
            connect(engramd.socket, "writer") as writer:
        (shared,) = reader.acquire_lock("data", ttl=60, shared=True)
        thread = threading.Thread(target=lambda: writer.acquire_lock("data", ttl=60,
                                                                     wait=WAIT))
        thread.start()
        wait_until(lambda: waiters(reader, "data") == ["writer"], "the writer in line")
        late = run_cli({**engramd.env, "ENGRAM_AGENT": "late"}, "lock", "acquire", "-n",
                       "--shared", "data")
        assert late.returncode == 4, late.stderr
        assert re.search(r"data has 1 request\(s\) waiting ahead: writer \(pid \d+\)$",
                         late.stderr.strip()), late.stderr
        reader.release_lock(shared.lock_id)
        thread.join(WAIT)


def a_grant_whose_reply_is_lost_ends_and_spares_its_group(
        socket_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter's client leaves just as its lease is granted (a Ctrl-C of ``lock acquire``
    at that moment): the reply cannot be sent (injected, in the engramd of this
    process). The lease, whose lock id no one knows, ends at once, not at its ttl; the
    process group it names, which never worked under it, is not stopped."""
    from engramd.protocol import AcquireLock, LocksGranted
    from engramd.server import Session

    real_send = Session.send

    async def lost(self: Session, message: Any) -> None:
        if isinstance(message, LocksGranted) and message.leases[0].holder == "leaver":
            raise trio.BrokenResourceError("the client left (injected)")
        await real_send(self, message)

    monkeypatch.setattr(Session, "send", lost)
    group = subprocess.Popen(["sleep", "600"], process_group=0)
    try:
        with connect(socket_path, "alice") as alice:
            (held,) = alice.acquire_lock("res", ttl=60)
            leaver = RawConnection.greeted(socket_path, "leaver")
            try:
                leaver.send(AcquireLock(id=2, resources=["res"], ttl=60, wait=30,
                                        pid=os.getpid(), pgid=group.pid))
                wait_until(lambda: waiters(alice, "res") == ["leaver"], "leaver in line")
                alice.release_lock(held.lock_id)
                wait_until(lambda: alice.get_lock("res").lease is None and not waiters(
                    alice, "res"), "the grant no one got to end (its ttl is 60 s)")
                assert group.poll() is None, "the group of a grant no one got was stopped"
            finally:
                leaver.close()
            (again,) = alice.acquire_lock("res", ttl=60, wait=0)
            assert again.fencing_token > held.fencing_token
    finally:
        group.kill()
        group.wait()


def test_a_grant_whose_reply_is_lost_ends_at_once(
        threaded_daemon: ThreadedDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    a_grant_whose_reply_is_lost_ends_and_spares_its_group(
        threaded_daemon.config.socket, monkeypatch)


def test_the_lease_history_is_journaled_and_read_in_bounded_walks(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``lock.history``: grants and ends (a break too; renewals left out), kept across a
    restart, read a bounded stretch of the journal at a time: a page may hold none and
    still say where to go on."""
    import engramd.queries

    monkeypatch.setattr(engramd.queries, "HISTORY_WALK", 10)
    config = make_config(env)
    with start_threaded(config), connect(config) as alice, connect(config, "ops") as ops:
        (first,) = alice.acquire_lock("job", ttl=30)
        alice.renew_lock(first.lock_id, ttl=60)
        for n in range(25):
            alice.create_unit("notes", "MESSAGE", f"note {n}")
        ops.break_lock("job", "it hung", lock_id=first.lock_id)
        (second,) = alice.acquire_lock("job", ttl=30)
    with start_threaded(config), connect(config, "bob") as bob:
        events, sizes, after = [], [], None
        while True:
            page = bob.lock_history(after=after, limit=2)
            events += page.events
            sizes.append(len(page.events))
            after = page.next_cursor
            if after is None:
                break
        assert len(sizes) >= 3 and 0 in sizes and max(sizes) <= 2  # (walks of 10 of ~30)
        assert [(type(e).__name__, e.lease.lock_id) for e in events] == [
            ("LockAcquired", first.lock_id), ("LockReleased", first.lock_id),
            ("LockAcquired", second.lock_id)]
        assert events[1].reason == "broken: it hung"  # type: ignore[union-attr]
        assert events[1].by == "ops"  # type: ignore[union-attr]
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        # From a time: the bisection by time finds the break's place in the log.
        since = events[1].ts
        assert [e.seq for e in bob.lock_history(since=since, limit=10).events][:1] == [
            events[1].seq]
        with pytest.raises(BadRequest, match="limit"):
            bob.lock_history(limit=0)


def test_a_time_without_an_offset_is_the_daemons_local_time(config: DaemonConfig) -> None:
    """``since``/``until`` without an offset (the protocol's Timestamp: the daemon's local
    time) are compared with the journal's times, never an internal error."""
    with start_threaded(config), connect(config) as alice:
        (lease,) = alice.acquire_lock("job", ttl=30)
        alice.create_unit("notes", "MESSAGE", "a note")
        local = dt.datetime.now().astimezone()
        hour_ago = (local - dt.timedelta(hours=1)).replace(tzinfo=None)
        hour_on = (local + dt.timedelta(hours=1)).replace(tzinfo=None)
        history = alice.lock_history(since=hour_ago, until=hour_on).events
        assert [event.lease.lock_id for event in history] == [lease.lock_id]
        assert alice.lock_history(since=hour_on).events == []
        listed = alice.list_units("notes", since=hour_ago, until=hour_on).units
        assert [unit.text for unit in listed] == ["a note"]
        assert alice.list_units("notes", since=hour_on).units == []
        # The ends of time, without an offset: no conversion fails.
        first, last = dt.datetime.min, dt.datetime.max
        assert len(alice.lock_history(since=first, until=last).events) == 1
        assert len(alice.list_units("notes", since=first, until=last).units) == 1
        wait_until(lambda: alice.search("note").total == 1, "the note indexed")
        assert alice.search("note", since=first, until=last).total == 1


def test_a_number_past_the_wire_is_a_bad_request_of_the_client(config: DaemonConfig) -> None:
    with start_threaded(config), connect(config) as alice:
        with pytest.raises(BadRequest, match="cannot be sent"):
            alice.lock_history(after=2**70)
        with pytest.raises(BadRequest, match="cannot be sent"):
            alice.lock_history(limit=10**30)
        assert alice.lock_history(limit=5).events == []  # the connection goes on

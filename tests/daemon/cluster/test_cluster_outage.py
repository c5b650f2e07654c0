"""Cluster mode outlives the cluster's absence (engramd.cluster.outage): no failure of
a background task ends the daemon, reads go on, and what could not be done (a lease
whose holder died) is done once the cluster is back.

Failures are injected into each background task of an in-process engramd on the
real NATS cluster; the last test takes the quorum away for real (two of three
nats-server processes killed). Marked ``cluster`` and ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")

import nats.errors
import nats.js.errors

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from engram_cli.client.errors import Unavailable as ClientUnavailable
from engramd.cluster import outage
from engramd.cluster.bucket import LeaseBucket
from engramd.cluster.journal import ClusterJournal
from engramd.cluster.nats import NatsLink, StreamMovedOn
from engramd.cluster.outage import Patience
from engramd.groups import GroupStops
from engramd.protocol import Unavailable
from tests.clustermachines import machine_on
from tests.conftest import (
    WAIT,
    ThreadedDaemon,
    engramd_log,
    make_config,
    run_cli,
    start_threaded,
    wait_until,
)
from tests.daemon.test_leases import a_grant_whose_reply_is_lost_ends_and_spares_its_group

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short pauses between attempts (the tests wait for the third)."""
    monkeypatch.setattr(Patience, "FIRST", 0.02)
    monkeypatch.setattr(Patience, "LONGEST", 0.2)


@pytest.fixture
def machine(fast: None, env: dict[str, str], nats_cluster: NatsCluster
            ) -> Iterator[tuple[ThreadedDaemon, Client]]:
    """An engramd in this process (a thread), on a deployment of its own."""
    config = make_config({**env, "ENGRAM_CLUSTER_SERVERS": nats_cluster.servers,
                          "ENGRAM_CLUSTER_DEPLOYMENT": "d" + uuid.uuid4().hex[:10],
                          "ENGRAM_CLUSTER_WRITE_TIMEOUT": "1"})
    with start_threaded(config) as daemon, \
            Client(config.socket, autostart=False, env={}) as engram:

        def synced() -> bool:
            cluster = engram.status().cluster
            return cluster is not None and cluster.leases_synced

        # (a new deployment's buckets on a cluster that earlier tests filled: slower on
        # a busy machine than the usual wait; the fresh-clone run once ran past it)
        wait_until(synced, "the leases to be read", timeout=WAIT * 3)
        yield daemon, engram


class Failing:
    """Makes ``owner.name`` (a coroutine function or a method) raise *error* while on,
    and counts the calls it refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str,
                 error: Callable[[], BaseException], coroutine: bool = True,
                 when: Callable[..., bool] = lambda *args, **kwargs: True) -> None:
        self.on, self.refused = True, 0
        real = getattr(owner, name)

        def should_fail(args: Any, kwargs: Any) -> bool:
            if self.on and when(*args, **kwargs):
                self.refused += 1
                return True
            return False

        if coroutine:
            async def patched(*args: Any, **kwargs: Any) -> Any:
                if should_fail(args, kwargs):
                    raise error()
                return await real(*args, **kwargs)
        else:
            def patched(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                if should_fail(args, kwargs):
                    raise error()
                return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, patched)

    def off(self) -> None:
        self.on = False


def no_quorum() -> BaseException:
    return nats.js.errors.APIError(code=409, err_code=10158,
                                   description="duplicate message id is in process")


INJECTIONS: dict[str, tuple[tuple[Any, str, bool], Callable[[], BaseException]]] = {
    "the view following the stream": ((NatsLink, "next_messages", True), no_quorum),
    "the announcements": ((NatsLink, "announce", True), TimeoutError),
    "the stream's facts": ((NatsLink, "stream_facts", True), lambda: OSError("gone")),
    "the lease watch": ((LeaseBucket, "next_updates", True),
                        lambda: RuntimeError("injected")),
    "the lease watch's start": ((LeaseBucket, "watch", True), no_quorum),
    "the leases' deadlines": ((GroupStops, "next_wakeup", False),
                              lambda: Unavailable("injected")),
}


@pytest.mark.parametrize("task", INJECTIONS)
def test_no_failure_of_a_background_task_ends_the_daemon(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch,
        task: str) -> None:
    daemon, engram = machine
    (owner, name, coroutine), error = INJECTIONS[task]
    failing = Failing(monkeypatch, owner, name, error, coroutine)
    if name == "watch":  # (a watch runs already: it has to fail first)
        Failing(monkeypatch, LeaseBucket, "next_updates", no_quorum).refused = 0
    if name == "next_wakeup":  # (looked at when a deadline changes: a grant)
        engram.acquire_lock(["poke"], ttl=5)
    wait_until(lambda: failing.refused >= 3, f"{task} to be tried again")
    assert daemon.thread.is_alive()
    assert engram.status().state == "ready"  # reads answer meanwhile
    failing.off()
    if name == "watch":
        monkeypatch.undo()
    # Writes, leases and the view work again: each task picked up where it was.
    unit = engram.create_unit("after", "MESSAGE", "x")
    wait_until(lambda: engram.list_units("after").units[-1].id == unit.id, "the write")
    [lease] = engram.acquire_lock(["res"], ttl=5, wait=10)
    engram.release_lock(lease.lock_id)
    wait_until(lambda: engram.get_lock("res").lease is None, "the release to be watched")
    assert daemon.thread.is_alive()


@pytest.mark.parametrize("what", ["journal", "leases"])
def test_a_request_waits_out_an_election_while_a_quorum_of_servers_answers(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch,
        what: str) -> None:
    """The cluster answers no write for 3 s, three times the write timeout, while every
    server takes connections (a stream leader being elected): the request waits it
    out (it was refused after the write timeout)."""
    daemon, engram = machine
    until = time.monotonic() + 3.0
    owner, name = (NatsLink, "publish") if what == "journal" else (LeaseBucket, "write")
    electing = Failing(monkeypatch, owner, name, nats.errors.NoRespondersError,
                       when=lambda *args, **kwargs: time.monotonic() < until)
    if what == "journal":
        unit = engram.create_unit("c", "MESSAGE", "through an election")
        assert [u.id for u in engram.list_units("c").units] == [unit.id]
    else:
        (lease,) = engram.acquire_lock("res", ttl=30)
        assert engram.get_lock("res").lease.lock_id == lease.lock_id  # type: ignore[union-attr]
    assert electing.refused >= 2
    assert daemon.thread.is_alive()


def test_cluster_status_says_how_old_facts_are_once_the_cluster_stops_answering(
        machine: tuple[ThreadedDaemon, Client], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream's facts cannot be read (its leader gone, an election under way):
    within a moment ``cluster status`` shows the leader, and writes accepted, with the
    age of what it knows (it said them as current for 10 s)."""
    daemon, engram = machine

    def leader() -> str:
        cluster = engram.status().cluster
        assert cluster is not None
        return cluster.leader

    # The facts to age must be whole: a new deployment's stream may be read before its
    # leader is elected (a busy cluster: the suite's runs), and a status without one
    # shows no age beside it.
    wait_until(lambda: bool(leader()), "the stream's leader to be known")
    Failing(monkeypatch, NatsLink, "stream_facts", nats.errors.NoRespondersError)

    def facts_age() -> float:
        cluster = engram.status().cluster
        assert cluster is not None
        return cluster.facts_age or 0.0

    wait_until(lambda: facts_age() > 2.0, "the facts to be 2 s old")
    shown = run_cli(env, "cluster", "status")
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines()
                  if line.startswith(("leader", "writes")))
    assert "s ago)" in fields["leader"] and "s ago)" in fields["writes"], shown.stdout
    assert daemon.thread.is_alive()


def test_cluster_status_says_the_cluster_answers_as_soon_as_it_does(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster stopped answering this machine and answers again: the first status
    after that says it is reachable (the announcements said so up to 9 s later)."""
    daemon, engram = machine
    away = Failing(monkeypatch, NatsLink, "announce", nats.errors.NoRespondersError)

    def reachable() -> bool:
        cluster = engram.status().cluster
        assert cluster is not None
        return cluster.reachable

    wait_until(lambda: not reachable(), "the machine to find the cluster away")
    away.off()
    report = engram.cluster()
    assert report.status.reachable and report.status.write_error is None, report.status
    assert daemon.thread.is_alive()


def test_a_grant_whose_reply_is_lost_ends_at_once_in_cluster_mode(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    """As on one machine: the release hands the lease over to the waiter in one batch,
    the waiter's client has left when the reply goes; the lease ends at once (it lived
    its ttl + 3 s), and its process group is not stopped."""
    daemon, _ = machine
    a_grant_whose_reply_is_lost_ends_and_spares_its_group(daemon.config.socket, monkeypatch)


def test_an_attempt_that_ran_out_of_time_is_told_in_words(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt of a write runs out of its time: the refusal says so in words (it
    said "TooSlowError", the name of trio's error, which has no message)."""
    daemon, engram = machine
    monkeypatch.setattr(outage, "ELECTION_SECONDS", 1.0)  # (every server answers)
    Failing(monkeypatch, NatsLink, "publish", trio.TooSlowError)
    with pytest.raises(ClientUnavailable) as refused:
        engram.create_unit("c", "MESSAGE", "refused")
    assert "did not answer in time (3 of 3 servers answer)" in str(refused.value), \
        refused.value
    assert daemon.thread.is_alive()


def ends(bucket: LeaseBucket, key: str, value: bytes = b"", **options: Any) -> bool:
    """A bucket write that ends a lease (its record is ``ended``)."""
    return b"ended" in value


@pytest.mark.parametrize("holder", ["process", "connection"])
def test_a_lease_whose_holder_goes_while_the_cluster_refuses_ends_once_it_is_back(
        machine: tuple[ThreadedDaemon, Client], env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, holder: str) -> None:
    daemon, engram = machine
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        other = Client(daemon.config.socket, agent_id="holder", autostart=False, env={})
        other.connect()
        if holder == "process":
            other.acquire_lock(["res"], ttl=30, pid=sleeper.pid)
            other.close()
        else:
            other.acquire_lock(["res"], ttl=30, bind_connection=True)
        failing = Failing(monkeypatch, LeaseBucket, "write", no_quorum, when=ends)
        if holder == "process":
            sleeper.kill()
            sleeper.wait()
        else:
            other.close()
        wait_until(lambda: failing.refused >= 3, "the lease's end to be tried again")
        assert daemon.thread.is_alive()
        assert engram.get_lock("res").lease is not None  # held on: nothing was written
        failing.off()
        wait_until(lambda: engram.get_lock("res").lease is None,
                   "the lease to end once the cluster takes writes")
        assert daemon.thread.is_alive()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_a_write_whose_view_cannot_catch_up_is_refused_and_the_next_goes_through(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, engram = machine
    moved = Failing(monkeypatch, NatsLink, "publish", lambda: StreamMovedOn(None))
    behind = Failing(monkeypatch, ClusterJournal, "caught_up",
                     lambda: Unavailable("injected: the view is behind"))
    with pytest.raises(ClientUnavailable, match="injected: the view is behind"):
        engram.create_unit("c", "MESSAGE", "refused")
    moved.off()
    behind.off()
    assert daemon.thread.is_alive()
    unit = engram.create_unit("c", "MESSAGE", "written")
    assert [u.id for u in engram.list_units("c").units] == [unit.id]


# -- the quorum lost for real ----------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: os.PathLike[str]) -> Iterator[NatsCluster]:
    with NatsCluster(os.path.join(str(tmp_path), "nats")) as cluster:
        yield cluster


def test_without_a_quorum_a_dead_holder_s_lease_ends_when_it_is_back_and_engramd_lives(
        env: dict[str, str], scratch: str, own_cluster: NatsCluster) -> None:
    a = machine_on(own_cluster, env, scratch, "a", ENGRAM_CLUSTER_WRITE_TIMEOUT="2").start()
    try:
        with a.client() as engram:
            engram.create_unit("q", "MESSAGE", "before")
        runner = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "lock", "run", "res", "--ttl", "30", "--",
             "sleep", "60"], env=a.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            with a.client() as engram:
                wait_until(lambda: engram.get_lock("res").lease is not None, "lock run's lease")
            own_cluster.stop(1, kill=True)
            own_cluster.stop(2, kill=True)
            runner.kill()  # (kill -9 of lock run: its machine ends the lease)
            runner.wait()
            wait_until(lambda: "ending the lease on res" in engramd_log(a.env).read_text(),
                       "the lease's end to fail for want of a quorum", timeout=60)
            assert a.process is not None and a.process.poll() is None
            # Reads go on, from this machine's view, saying so once the machine has
            # noticed (an announcement fails: within 5 s).
            wait_until(lambda: "may be stale" in a.cli("unit", "list", "-c", "q").stderr,
                       "reads to say they may be stale", timeout=30)
            listed = a.cli("unit", "list", "-c", "q", "--json")
            assert listed.returncode == 0, listed.stderr
            assert [json.loads(line)["payload"] for line in listed.stdout.splitlines()] == [
                "before"]
            # A request says in one line why it was refused, and what it did.
            refused = a.cli("lock", "acquire", "other", "--ttl", "5")
            assert refused.returncode == 69, refused.stderr
            assert "no quorum (1 of 3 servers answer)" in refused.stderr, refused.stderr
            assert "nothing was granted" in refused.stderr
            errors = [line for line in refused.stderr.splitlines()
                      if line.startswith("engram: error")]
            assert len(errors) == 1 and "APIError" not in refused.stderr, refused.stderr
            # Status says what is known and how old it is; doctor, that writes are refused.
            status = a.cli("cluster", "status", "--json")
            assert status.returncode == 0, status.stderr
            state = json.loads(status.stdout)["status"]
            assert state["reachable"] is False and state["servers_answering"] == 1
            assert state["write_error"] and state["facts_age"] is not None
            plain = a.cli("cluster", "status")
            assert "as of" in plain.stdout and "1 of 3 answer" in plain.stdout, plain.stdout
            doctor = a.cli("doctor", "--json")
            checks = {json.loads(line)["check"]: json.loads(line)
                      for line in doctor.stdout.splitlines()}
            assert checks["journal"]["status"] == "fail", checks["journal"]
            assert "refused" in checks["journal"]["detail"], checks["journal"]
            assert a.process.poll() is None
            own_cluster.start(1, 2)
            own_cluster.wait_healthy()
            with a.client() as engram:
                wait_until(lambda: engram.get_lock("res").lease is None,
                           "the dead holder's lease to end once the quorum is back",
                           timeout=60)
            wait_until(lambda: a.cli("unit", "create", "-c", "q", "-p", "after"
                                     ).returncode == 0, "writes to resume", timeout=60)
            assert a.process.poll() is None
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()
    finally:
        a.stop()


def test_a_task_done_whose_answer_was_lost_is_done_once_when_tried_again(
        machine: tuple[ThreadedDaemon, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak found tasks done twice in the journal: a `done` stored while its answer
    was lost (the client told "it may or may not be in the journal"), then tried again
    by its claimer, whose claim still held."""
    daemon, engram = machine
    engram.add_task("once", context_id="work")
    task = engram.claim_task(contexts=["work"], ttl=30)
    real = NatsLink.publish
    stored: list[int] = []

    async def stored_then_lost(self: NatsLink, body: bytes, *args: Any, **kwargs: Any) -> int:
        if b"done: once" in body and not stored:
            stored.append(await real(self, body, *args, **kwargs))
        if b"done: once" in body:
            raise TimeoutError("the answer was lost (injected)")
        return await real(self, body, *args, **kwargs)

    monkeypatch.setattr(NatsLink, "publish", stored_then_lost)
    monkeypatch.setattr(outage, "ELECTION_SECONDS", 1.0)  # (every server answers)
    with pytest.raises(ClientUnavailable, match="may or may not be in the journal"):
        engram.finish_task(task.id)
    monkeypatch.undo()
    assert stored, "the first done was stored"
    assert engram.finish_task(task.id).state == "done"
    states = [unit.meta.get("state") for unit in engram.list_units("work").units
              if unit.type == "TASK_STATUS"]
    assert states.count("done") == 1, states
    assert daemon.thread.is_alive()

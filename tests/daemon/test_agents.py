"""Messages, tasks, sessions and the brief through the real daemon and both client libraries."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import trio

from engram_cli.client.asynchronous import open_client
from engram_cli.client.errors import BadRequest, Conflict, Forbidden, LockHeld, NotFound
from engramd.config import DaemonConfig
from engramd.server import Server
from tests.conftest import WAIT, ThreadedDaemon, connect, start_threaded, wait_until


def texts(page_or_units: object) -> list[bytes]:
    units = getattr(page_or_units, "messages", page_or_units)
    return [unit.payload for unit in units]  # type: ignore[attr-defined]


def in_flight(config: DaemonConfig, op: str) -> bool:
    """Whether a request *op* is being served now (a waiting inbox, say)."""
    with connect(config, "probe") as probe:
        stats = probe.stats()
    # The stats request is in flight itself; nothing else is sent meanwhile.
    return (stats.gauges["requests_in_flight"] > 1
            and f'requests_total{{op="{op}"}}' not in stats.counters)


# -- messages ---------------------------------------------------------------------------


def test_each_recipient_gets_a_message_once_and_a_broadcast_reaches_newcomers(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob, \
            connect(config, "carol") as carol:
        alice.send_message(["bob", "carol"], "to both")
        alice.send_message("*", "to all")
        assert bob.unread().unread == 2
        assert texts(bob.inbox()) == [b"to both", b"to all"]
        assert texts(bob.inbox()) == []
        assert texts(carol.inbox(limit=1)) == [b"to both"]
        assert carol.unread().unread == 1
        assert texts(carol.inbox()) == [b"to all"]
        assert texts(alice.inbox()) == []  # not its own broadcast
        with connect(config, "dave") as dave:  # never seen before the broadcast
            assert texts(dave.inbox()) == [b"to all"]
            assert texts(dave.inbox()) == []


def test_sessions_of_one_agent_share_its_unread_mark(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice:
        sent = {alice.send_message("bob", f"m{n}", new_recipients=True).id for n in range(60)}
    seen: list[str] = []

    def read() -> None:
        with connect(config, "bob") as bob:
            while page := bob.inbox(limit=3).messages:
                seen.extend(unit.id for unit in page)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(WAIT)
    assert sorted(seen) == sorted(sent)  # every message once, to one session or another


def test_peek_leaves_messages_unread_and_the_mark_survives_a_restart(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        alice.send_message("bob", "first")
        alice.send_message("bob", "second")
        assert texts(bob.inbox(peek=True)) == [b"first", b"second"]
        assert texts(bob.inbox(limit=1)) == [b"first"]
    threaded_daemon.stop()
    with start_threaded(config), connect(config, "bob") as bob:
        assert texts(bob.inbox()) == [b"second"]
        assert texts(bob.inbox()) == []


def test_a_waiting_inbox_returns_when_a_message_arrives(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    got: list[bytes] = []

    def wait_for_mail() -> None:
        with connect(config, "bob") as bob:
            got.extend(texts(bob.inbox(wait=60)))

    waiter = threading.Thread(target=wait_for_mail)
    waiter.start()
    wait_until(lambda: in_flight(config, "inbox"), "the inbox to wait")
    with connect(config, "alice") as alice:
        alice.send_message("carol", "not for bob", new_recipients=True)
        alice.send_message("bob", "wake up")
    waiter.join(WAIT)
    assert not waiter.is_alive() and got == [b"wake up"]
    with connect(config, "bob") as bob:
        assert texts(bob.inbox(wait=0.05)) == []  # nothing more: empty once the wait ends


def test_an_ack_required_message_stays_pending_until_acknowledged(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        message = alice.send_message("bob", "please confirm", ack_required=True,
                                     thread="deploy-7")
        assert bob.unread().pending_acks == 1
        bob.inbox()
        assert [unit.id for unit in bob.inbox(pending=True).messages] == [message.id]
        with pytest.raises(Forbidden, match="not addressed to alice"):
            alice.ack_message(message.id)
        ack = bob.ack_message(message.id)
        assert bob.ack_message(message.id).id == ack.id  # once
        assert bob.inbox(pending=True).messages == []
        assert ack.meta == {"ack": message.id, "thread": "deploy-7"}
        related = alice.related_units(message.id)
        assert [(edge.source, edge.type) for edge in related.edges] == [(ack.id, "RESPONDS_TO")]


def test_a_reply_joins_the_thread_and_context_of_what_it_answers(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        question = alice.send_message("bob", "which port?", context_id="build-42")
        answer = bob.send_message("alice", "8080", reply_to=question.id)
        assert answer.context_id == "build-42"
        assert answer.meta["thread"] == question.id
        assert [(r.type, r.target) for r in answer.relationships] == [("RESPONDS_TO",
                                                                       question.id)]
        with pytest.raises(BadRequest, match="not a message"):
            bob.send_message("alice", "x", reply_to=bob.create_unit("c", "REASONING", "r").id)
        for bad in ([], ["a,b"], ["*", "bob"], [""]):
            with pytest.raises(BadRequest):
                bob.send_message(bad, "x")


# -- tasks ------------------------------------------------------------------------------


def test_the_next_task_is_the_most_urgent_ready_one_and_dependencies_wait(
        threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config, "alice") as alice:
        low = alice.add_task("low", priority=3)
        first = alice.add_task("first urgent", priority=1)
        second = alice.add_task("second urgent", priority=1)
        blocked = alice.add_task("blocked", priority=0, depends_on=[first.id])
        assert blocked.open_dependencies == [first.id]
        assert [t.id for t in alice.list_tasks(ready=True)] == [first.id, second.id, low.id]
        assert alice.claim_task().id == first.id
        assert blocked.id not in [t.id for t in alice.list_tasks(ready=True)]
        with pytest.raises(Conflict, match="waits for"):
            alice.claim_task(blocked.id)
        alice.finish_task(first.id)
        assert alice.get_task(first.id).state == "done"
        assert alice.claim_task().id == blocked.id  # P0 now that its dependency is done
        with pytest.raises(Conflict, match="is done"):
            alice.claim_task(first.id)
        with pytest.raises(NotFound):
            alice.get_task("01a2338e-0000-7000-8000-000000000000")
        with pytest.raises(BadRequest):
            alice.add_task("x", priority=5)


def test_done_tasks_are_read_from_the_store_not_kept_in_memory(
        threaded_daemon: ThreadedDaemon) -> None:
    """Done tasks accumulate with the journal: the board keeps only the open ones."""
    with connect(threaded_daemon.config, "alice") as alice:
        first = alice.add_task("first", priority=1)
        second = alice.add_task("second", priority=2)
        after = alice.add_task("after both", priority=0, depends_on=[first.id, second.id])
        kept = alice.add_task("still open", priority=3)
        for task in (first, second):
            alice.claim_task(task.id)
            alice.finish_task(task.id)
        assert threaded_daemon.server is not None
        board = threaded_daemon.server.engine.ready().board
        assert set(board._tasks) == {after.id, kept.id}
        assert alice.get_task(first.id).state == "done"
        with pytest.raises(Conflict, match="is done"):
            alice.claim_task(second.id)
        assert alice.claim_task().id == after.id  # its dependencies are done, in the store
        listed = [task.id for task in alice.list_tasks()]
        assert listed == [after.id, kept.id, first.id, second.id]  # open first, then done
        assert [task.id for task in alice.list_tasks(limit=3)] == [after.id, kept.id, first.id]
        assert [task.id for task in alice.list_tasks(states=["done"], limit=1)] == [first.id]
        assert alice.list_tasks(states=["done"], contexts=["elsewhere"]) == []


def test_a_claim_is_exclusive_and_only_its_session_finishes_it(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "alice") as other_session, \
            connect(config, "bob") as bob:
        task = alice.add_task("only once")
        claimed = alice.claim_task(task.id)
        assert claimed.state == "claimed" and claimed.claim is not None
        with pytest.raises(LockHeld, match="claimed by alice"):
            bob.claim_task(task.id)
        with pytest.raises(NotFound, match="no task is ready"):
            bob.claim_task()
        with pytest.raises(Conflict):
            bob.finish_task(task.id)
        with pytest.raises(Conflict, match="not by this session"):
            other_session.finish_task(task.id)
        with pytest.raises(Conflict):
            bob.finish_task(task.id, token=claimed.claim.fencing_token)  # not bob's claim
        done = other_session.finish_task(task.id, token=claimed.claim.fencing_token)
        assert done.state == "done" and done.done_by == "alice" and done.claim is None
        with pytest.raises(Conflict, match="not claimed"):
            alice.release_task(task.id)


def test_a_lost_claim_cannot_mark_the_task_done(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        task = alice.add_task("slow work")
        stale = alice.claim_task(task.id, ttl=0.2)
        assert stale.claim is not None
        wait_until(lambda: bob.get_task(task.id).state == "open", "the claim to expire")
        fresh = bob.claim_task()
        assert fresh.id == task.id and fresh.claim is not None
        assert fresh.claim.fencing_token > stale.claim.fencing_token
        with pytest.raises(Conflict):
            alice.finish_task(task.id, token=stale.claim.fencing_token)
        assert bob.release_task(task.id).state == "open"
        assert [t.id for t in bob.list_tasks(ready=True)] == [task.id]


def test_a_claim_ends_with_its_connection_or_its_process(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice:
        first, second = alice.add_task("a"), alice.add_task("b")
        with connect(config, "worker") as worker:
            assert worker.claim_task().id == first.id
        wait_until(lambda: alice.get_task(first.id).state == "open", "the connection's claim "
                   "to end")
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert alice.claim_task(second.id, pid=sleeper.pid).claim.pid == sleeper.pid
            assert alice.get_task(second.id).state == "claimed"
        finally:
            sleeper.kill()
            sleeper.wait()
        wait_until(lambda: alice.get_task(second.id).state == "open", "the dead process's "
                   "claim to end")
        assert alice.list_locks() == []


def test_tasks_and_their_state_survive_a_restart(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice:
        done, open_ = alice.add_task("finished"), alice.add_task("to do", priority=0)
        alice.claim_task(done.id)
        alice.finish_task(done.id)
    threaded_daemon.stop()
    with start_threaded(config), connect(config, "alice") as alice:
        assert {t.id: t.state for t in alice.list_tasks()} == {done.id: "done",
                                                                open_.id: "open"}
        assert [t.id for t in alice.list_tasks(ready=True)] == [open_.id]


# -- sessions, the directory and the brief -----------------------------------------------


def test_an_announced_session_is_gone_when_its_process_exits(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with connect(config, "alice") as alice:
        alice.announce_session(pid=sleeper.pid, harness="claude-code")
        alice.send_message("bob", "hi", new_recipients=True)

        def sessions() -> dict[str, list[tuple[int, str, bool]]]:
            return {agent.agent: [(s.pid, s.harness, s.gone_at is not None)
                                  for s in agent.sessions if s.announced]
                    for agent in alice.list_agents()}

        assert sessions()["alice"] == [(sleeper.pid, "claude-code", False)]
        bob = next(agent for agent in alice.list_agents() if agent.agent == "bob")
        assert bob.unread == 1 and bob.sessions == []  # addressed, never connected
        sleeper.kill()
        sleeper.wait()
        wait_until(lambda: sessions()["alice"] == [(sleeper.pid, "claude-code", True)],
                   "the session to be gone")


def test_the_brief_shows_what_waits_and_advances_its_mark(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        bob.create_unit("build-42", "REASONING", "bob was here")
        empty = bob.brief()
        assert empty.unread == 0 and empty.since == [] and empty.contexts == ["build-42"]
        alice.send_message("bob", "look", ack_required=True)
        note = alice.create_unit("build-42", "REASONING", "the cache is stale")
        alice.update_context("build-42", pin=[note.id])
        alice.acquire_lock("file:github.com/t/repo:src/", ttl=60)  # a directory
        alice.acquire_lock("file:github.com/t/other:README.md", ttl=60)  # another repository
        (own,) = bob.acquire_lock("deploy:prod", ttl=60)
        task = alice.add_task("ship it", context_id="build-42")
        brief = bob.brief(files=["file:github.com/t/repo:src/app.py",
                                 "file:github.com/t/repo:README.md"], contexts=["build-42"])
        assert brief.unread == 1 and texts(brief.messages) == [b"look"]
        assert brief.pending_acks == 1
        assert [lease.resource for lease in brief.leases] == [own.resource]
        assert [lease.resource for lease in brief.others_leases] == [
            "file:github.com/t/repo:src/"]
        assert [t.id for t in brief.ready] == [task.id] and brief.ready_total == 1
        assert b"the cache is stale" in texts(brief.since) and brief.since_total >= 2
        assert [unit.id for unit in brief.pinned] == [note.id]
        again = bob.brief(contexts=["build-42"])
        assert again.since == [] and again.since_total == 0
        assert again.unread == 1  # the brief shows messages; only inbox reads them


async def test_the_trio_client_sends_reads_and_claims(daemon: Server,
                                                      config: DaemonConfig) -> None:
    with trio.fail_after(WAIT):
        async with open_client(config.socket, autostart=False, agent_id="alice") as alice, \
                open_client(config.socket, autostart=False, agent_id="bob") as bob:
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def wait_for_mail() -> None:
                    got.extend(texts(await bob.inbox(wait=30)))

                nursery.start_soon(wait_for_mail)
                await alice.send_message("bob", "from trio")
            assert got == [b"from trio"]
            task = await alice.add_task("async work")
            claimed = await bob.claim_task()
            assert claimed.id == task.id
            assert (await bob.finish_task(task.id)).state == "done"
            assert [agent.agent for agent in await alice.list_agents()] == ["alice", "bob"]
            assert (await bob.brief()).agent == "bob"



def test_the_brief_shows_the_newest_units_across_contexts(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        for context_id in ("busy", "quiet"):
            bob.create_unit(context_id, "REASONING", "joined")
        bob.brief()
        for n in range(6):
            alice.create_unit("busy", "REASONING", f"busy {n}")
        alice.create_unit("quiet", "REASONING", "quiet 0")
        alice.create_unit("busy", "REASONING", "busy 6")
        brief = bob.brief(items=2)
        assert texts(brief.since) == [b"quiet 0", b"busy 6"] and brief.since_total == 8


def test_a_message_to_an_agent_never_seen_is_refused_naming_the_known_ones(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        bob.ping()
        with pytest.raises(NotFound, match=r"no agent bbo is known here \(known: alice, bob\)"):
            alice.send_message("bbo", "a typo")
        assert [agent.agent for agent in alice.list_agents()] == ["alice", "bob"]  # no phantom
        alice.send_message("*", "to everyone")  # every agent, also ones to come
        alice.send_message("carol", "before carol starts", new_recipients=True)
        with connect(config, "carol") as carol:
            assert texts(carol.inbox()) == [b"to everyone", b"before carol starts"]


def test_every_connected_process_is_a_session_until_it_exits(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    code = ("import sys, time; from engram_cli.client import Client; "
            "c = Client(sys.argv[1], agent_id='scripted', client_name='nightly-script', "
            "autostart=False, env={}); c.ping(); print('ready', flush=True); time.sleep(60)")
    script = subprocess.Popen([sys.executable, "-c", code, config.socket],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout is not None and script.stdout.readline() == "ready\n"
        with connect(config, "alice") as alice:
            def sessions() -> list[tuple[int, str, int, bool, bool]]:
                return [(s.pid, s.harness, s.connections, s.announced, s.gone_at is not None)
                        for agent in alice.list_agents() if agent.agent == "scripted"
                        for s in agent.sessions]

            assert sessions() == [(script.pid, "nightly-script", 1, False, False)]
            script.kill()
            script.wait(WAIT)
            # It lived under presence.BRIEF seconds: forgotten once gone, not listed.
            wait_until(lambda: sessions() == [], "the short session to go")
    finally:
        script.kill()
        script.wait(WAIT)


def test_claiming_a_task_the_session_holds_returns_that_claim(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with connect(config, "alice") as alice, connect(config, "bob") as bob:
            task = alice.add_task("ship it")
            first = alice.claim_task(task.id, pid=sleeper.pid)
            again = alice.claim_task(task.id, pid=sleeper.pid)  # a retry of a lost answer
            assert again.claim == first.claim
            with pytest.raises(LockHeld):
                alice.claim_task(task.id)  # another session of alice: this connection
            with pytest.raises(LockHeld):
                bob.claim_task(task.id, pid=sleeper.pid)  # the same process, another agent
    finally:
        sleeper.kill()
        sleeper.wait(WAIT)

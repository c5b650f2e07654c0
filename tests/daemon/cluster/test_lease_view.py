"""The lease view of cluster mode (engramd.cluster.leaseview) on its own: what it makes
of the leases bucket's revisions, as its watch hands them over. Its bookkeeping only;
the real bucket and watch are tested in tests/daemon/cluster/test_cluster_leases.py, and
the handover in one write planned from it in test_cluster_handover.py."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
import trio

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")

from engramd.caller import Caller
from engramd.cluster.bucket import (
    HANDOVER_SLACK,
    MARKER_TTL,
    Ended,
    Held,
    KeyUpdate,
    Terms,
    Ticket,
    decode_ticket,
    encode_record,
    holder_token,
    lease_key,
    root_token,
    ticket_key,
)
from engramd.cluster.handover import plan
from engramd.cluster.leaseview import LeaseView
from engramd.cluster.tickets import Tickets
from engramd.grants import Grant
from engramd.locks import Holding, LockTable
from engramd.protocol import AcquireLock, Lease, LockReleased
from engramd.protocol.model import LockEvent

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def lease(resource: str, lock_id: str, machine: str = "m2") -> Lease:
    return Lease(resource=resource, holder="alice", lock_id=lock_id, fencing_token=0,
                 acquired_at=NOW, expires_at=NOW, ttl=30, machine=machine)


def held(resource: str, revision: int, lock_id: str = "L1") -> KeyUpdate:
    return KeyUpdate(lease_key(resource, lock_id), revision,
                     encode_record(Held(lease(resource, lock_id))))


def ticket(resource: str, waiter: str, revision: int, number: int = 0,
           shared: bool = False) -> KeyUpdate:
    record = Ticket(number=number, machine="m2", agent="bob", session=waiter, pid=1,
                    resources=[resource], shared=shared)
    return KeyUpdate(ticket_key(waiter), revision, encode_record(record))


def grant(resource: str, shared: bool = False) -> Grant:
    caller = Caller(agent_id="carol", uid=0, pid=9, connection_id="conn:9@t")
    return Grant([resource], 30, AcquireLock(resources=[resource], shared=shared), caller,
                 "conn:9@t", 9)


class Recorder:
    def __init__(self) -> None:
        self.ended: list[tuple[str, str, str]] = []
        self.found: list[str] = []
        self.news: list[LockEvent] = []

    def view(self) -> LeaseView:
        table = LockTable()

        def ended(holding: Holding, tell: str, by: str) -> None:
            table.remove(holding)
            self.ended.append((holding.lease.resource, tell, by))

        return LeaseView(table, machine="m1", boot_id="b", ended=ended,
                         found=lambda holding: self.found.append(holding.lease.resource),
                         news=self.news.append)

    def told(self) -> list[tuple[str, str, int]]:
        """(kind, lock id, token) of each lock event the view told."""
        return [(str(type(e).__struct_config__.tag), e.lease.lock_id, e.lease.fencing_token)
                for e in self.news]


async def test_a_lease_is_held_with_its_revision_as_token_until_it_ends() -> None:
    seen = Recorder()
    view = seen.view()
    view.apply(held("db", 7))
    assert view.table.held["L1"].lease.fencing_token == 7
    view.apply(held("db", 5))  # older news: ignored
    assert view.table.held["L1"].lease.fencing_token == 7
    view.apply(KeyUpdate(lease_key("db", "L1"), 9,
                         encode_record(Ended(reason="r", by="bob"))))
    assert "L1" not in view.table.held and seen.ended == [("db", "broken", "bob")]
    view.apply(held("db", 11, lock_id="L2"))
    view.apply(KeyUpdate(lease_key("db", "L2"), 12, b"", operation="PURGE"))
    assert seen.ended[-1] == ("db", "expired", "the cluster")
    assert view.revisions[lease_key("db", "L2")] == 12


async def test_shared_leases_on_one_resource_are_held_together() -> None:
    view = Recorder().view()
    one = msgspec.structs.replace(lease("file:/srv/", "S1"), shared=True)
    two = msgspec.structs.replace(lease("file:/srv/", "S2"), shared=True)
    view.apply(KeyUpdate(lease_key(one.resource, "S1"), 3, encode_record(Held(one))))
    view.apply(KeyUpdate(lease_key(two.resource, "S2"), 4, encode_record(Held(two))))
    assert [h.lease.lock_id for h in view.table.on("file:/srv/")] == ["S1", "S2"]
    assert view.free(grant("file:/srv/a", shared=True))
    assert not view.free(grant("file:/srv/a"))  # a writer inside the directory waits


async def test_a_lease_granted_here_before_a_restart_is_handed_to_the_manager() -> None:
    seen = Recorder()
    view = seen.view()
    view.apply(KeyUpdate(lease_key("mine", "L"), 3,
                         encode_record(Held(lease("mine", "L", machine="m1")))))
    view.apply(held("theirs", 4))
    assert seen.found == ["mine"]


async def test_tickets_make_the_line_in_number_order() -> None:
    view = Recorder().view()
    view.apply(ticket("q", "w1", 20))            # its number: its revision
    view.apply(ticket("q", "w2", 21, number=3))  # a later write of an earlier waiter
    assert [w.session for w in view.line().line] == ["w2", "w1"]
    assert view.turn("w2", 3, grant("q")) and not view.turn("w1", 20, grant("q"))
    assert not view.free(grant("q"))
    view.apply(KeyUpdate(ticket_key("w2"), 22, b""))  # withdrawn
    assert view.turn("w1", 20, grant("q"))
    assert ticket_key("w2") not in view.revisions  # never written again


async def test_a_waiting_writer_keeps_new_readers_in_line() -> None:
    view = Recorder().view()
    view.apply(ticket("file:/srv/", "w1", 20))  # an exclusive waiter on the directory
    assert not view.free(grant("file:/srv/a", shared=True))
    assert view.free(grant("file:/other", shared=True))
    view.apply(KeyUpdate(ticket_key("w1"), 21, b""))
    view.apply(ticket("file:/srv/", "w3", 22, shared=True))  # a reader waits
    assert view.free(grant("file:/srv/a", shared=True))  # readers do not queue for readers


async def test_a_new_watch_forgets_what_it_no_longer_shows() -> None:
    seen = Recorder()
    view = seen.view()
    view.apply(held("gone", 3, "G"))
    view.apply(ticket("gone", "w", 4))
    view.apply(held("new", 12, "N"))  # written after the new watch began
    view._forget_unseen(seen={lease_key("kept", "K")}, before=10)
    assert "G" not in view.table.held and "w" not in view.tickets
    assert seen.ended == [("gone", "expired", "the cluster")]
    assert "N" in view.table.held


async def test_an_expiry_marker_is_forgotten_once_the_servers_drop_it(
        autojump_clock: trio.abc.Clock) -> None:
    view = Recorder().view()
    view.apply(held("once", 3))
    view.apply(KeyUpdate(lease_key("once", "L1"), 4, b"", operation="PURGE"))
    assert view.revisions[lease_key("once", "L1")] == 4
    await trio.sleep(MARKER_TTL + 1)
    view.apply(held("other", 5, "L9"))  # any later news prunes
    assert lease_key("once", "L1") not in view.revisions


async def test_a_value_that_is_not_engram_s_is_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        Recorder().view().apply(KeyUpdate(lease_key("x", "L"), 1, b"\x01not msgpack"))
    with pytest.raises(ValueError):  # a key of an older engram
        Recorder().view().apply(KeyUpdate("l.eA", 1, b""))


@pytest.mark.parametrize("resource", ["file:", "", "file:relative/path"])
async def test_a_ticket_for_no_valid_resource_leaves_no_trace_in_the_line(
        resource: str) -> None:
    """A ticket written by something else with the cluster's credentials (the cluster's
    trial): refused as a request's resources would be, and kept nowhere, so that the
    lease commands of every machine do not meet it in the line."""
    view = Recorder().view()
    with pytest.raises(ValueError):
        view.apply(ticket(resource, "w1", 3))
    assert not view.tickets and "w1" not in view.ticket_seen
    view.apply(ticket("db", "w2", 4))  # the line goes on
    assert list(view.tickets) == ["w2"]
    view.line()


def with_terms(update: KeyUpdate, **changes: object) -> KeyUpdate:
    """*update*'s ticket with its terms changed so."""
    record = decode_ticket(update.value)
    assert record.terms is not None
    return KeyUpdate(update.key, update.revision, encode_record(msgspec.structs.replace(
        record, terms=msgspec.structs.replace(record.terms, **changes))))


@pytest.mark.parametrize(("why", "bad"), [
    ("a ttl past locks.max_ttl", lambda u: with_terms(u, ttl=1e9)),
    ("no ttl", lambda u: with_terms(u, ttl=0.0)),
    ("no lock id for its resource", lambda u: with_terms(u, lock_ids=[])),
    ("one lock id twice", lambda u: with_terms(u, lock_ids=["T", "T"])),
    ("a process group without its process", lambda u: with_terms(u, pgid=77)),
    ("a process group that is init's", lambda u: with_terms(u, pid=9, pgid=1)),
    ("a number after its revision", lambda u: KeyUpdate(u.key, u.revision, encode_record(
        msgspec.structs.replace(decode_ticket(u.value), number=u.revision + 1)))),
    ("a negative pid", lambda u: KeyUpdate(u.key, u.revision, encode_record(
        msgspec.structs.replace(decode_ticket(u.value), pid=-1)))),
])
async def test_a_ticket_an_engramd_would_not_write_is_refused_whole(why: str, bad: object
                                                                    ) -> None:
    """Checked as a request is (a forged ticket with a huge ttl was handed a lease no
    one could break): refused, and kept nowhere."""
    view = Recorder().view()
    view.max_ttl = 3600.0
    assert callable(bad)
    with pytest.raises(ValueError):
        view.apply(bad(waiting_ticket(["db"], "w1", 3)))
    assert not view.tickets and "w1" not in view.ticket_seen, why
    view.apply(waiting_ticket(["db"], "w2", 4))  # the line goes on
    assert list(view.tickets) == ["w2"]


async def test_a_ticket_of_a_request_made_for_an_agent_joins_the_line() -> None:
    """A request made 'as' an agent (through the gateway) has no process: pid 0."""
    view = Recorder().view()
    view.apply(KeyUpdate(ticket_key("w1"), 3, encode_record(msgspec.structs.replace(
        decode_ticket(waiting_ticket(["db"], "w1", 3).value), pid=0))))
    assert list(view.tickets) == ["w1"]


async def test_a_refresh_that_moves_its_ticket_ahead_in_line_is_refused() -> None:
    view = Recorder().view()
    view.apply(ticket("q", "w1", 20))
    view.apply(ticket("q", "w1", 22, number=20))  # its refresh
    assert view.tickets["w1"].number == 20
    with pytest.raises(ValueError):
        view.apply(ticket("q", "w1", 24, number=1))
    assert not view.tickets


async def test_a_ticket_not_written_again_leaves_the_line() -> None:
    """Its machine writes it again every refresh while its waiter waits: one not seen
    written within Tickets.STALE (one with no TTL of its own, its machine gone) is out
    of the line, on trio's clock; written again, it is back."""
    view = Recorder().view()
    start = trio.current_time()
    view.apply(ticket("q", "w1", 20, number=1))  # (no TTL: the servers keep it)
    changed = view.changed
    view.age(start + Tickets.STALE)
    assert list(view.tickets) == ["w1"] and not changed.is_set()
    view.age(start + Tickets.STALE + 0.1)
    assert not view.tickets and view.turn("w2", 30, grant("q")) and changed.is_set()
    view.apply(ticket("q", "w1", 32, number=1))
    assert list(view.tickets) == ["w1"]


async def test_every_lease_change_the_view_takes_in_is_news_once() -> None:
    seen = Recorder()
    view = seen.view()
    view.apply(held("before", 2, "B"))  # held when the watch began: no news
    view.synced.set()
    view.apply(held("db", 7))
    renewal = msgspec.structs.replace(lease("db", "L1"), fencing_token=7)
    view.apply(KeyUpdate(lease_key("db", "L1"), 8, encode_record(Held(renewal))))
    view.apply(KeyUpdate(lease_key("db", "L1"), 9,
                         encode_record(Ended(reason="released", by="alice"))))
    view.apply(KeyUpdate(lease_key("db", "L1"), 10, b"", operation="PURGE"))  # the end's
    view.apply(held("db", 11, lock_id="L2"))
    view.apply(KeyUpdate(lease_key("db", "L2"), 12, b"", operation="PURGE"))  # its TTL
    assert seen.told() == [("lock.acquired", "L1", 7), ("lock.renewed", "L1", 7),
                           ("lock.released", "L1", 7), ("lock.acquired", "L2", 11),
                           ("lock.expired", "L2", 11)]
    released = seen.news[2]
    assert isinstance(released, LockReleased)
    assert (released.reason, released.by) == ("released", "alice")


async def test_this_machine_s_own_writes_are_news_once_whichever_comes_first() -> None:
    seen = Recorder()
    view = seen.view()
    view.synced.set()
    mine = lease("db", "M", machine="m1")
    view.wrote(lease_key("db", "M"), 5, Held(mine), mine)  # the write's answer first
    view.apply(KeyUpdate(lease_key("db", "M"), 5, encode_record(Held(mine))))  # its echo
    view.table.install(Holding(msgspec.structs.replace(mine, fencing_token=5), 30.0))
    view.apply(KeyUpdate(lease_key("db", "M"), 6,  # the echo of its end first
                         encode_record(Ended(reason="released", by="alice"))))
    view.wrote(lease_key("db", "M"), 6, Ended(reason="released", by="alice"), mine)
    assert seen.told() == [("lock.acquired", "M", 5), ("lock.released", "M", 5)]


# -- what a release hands over in one write (engramd.cluster.handover) ----------------------


def terms(lock_ids: list[str], ttl: float = 30) -> Terms:
    return Terms(ttl=ttl, lock_ids=lock_ids, boot_id="b2", sent=100.0, pid=None)


def waiting_ticket(resources: list[str], waiter: str, revision: int, *, shared: bool = False,
                   with_terms: bool = True) -> KeyUpdate:
    record = Ticket(number=0, machine="m2", agent="bob", session=waiter, pid=1,
                    resources=resources, shared=shared,
                    terms=terms([f"T{waiter}{n}" for n in range(len(resources))])
                    if with_terms else None)
    return KeyUpdate(ticket_key(waiter), revision, encode_record(record))


def watched(view: LeaseView, *updates: KeyUpdate) -> None:
    """*updates* as the watch delivers them."""
    for update in updates:
        view.apply(update)
        view._delivered(update)
    view.synced.set()


async def test_the_next_in_line_is_whoever_the_end_lets_go_in_ticket_order() -> None:
    view = Recorder().view()
    writer = msgspec.structs.replace(lease("file:/d/", "W"), shared=False)
    watched(view, KeyUpdate(lease_key("file:/d/", "W"), 3, encode_record(Held(writer))),
            waiting_ticket(["file:/d/a"], "w1", 4),
            waiting_ticket(["file:/d/"], "r1", 5, shared=True),
            waiting_ticket(["file:/d/b"], "w2", 6),  # behind r1? no: they do not conflict
            waiting_ticket(["file:/d/a"], "w3", 7))  # behind w1
    holding = view.table.held["W"]
    assert [w for w, _ in view.next_in_line(holding)] == ["w1"]
    # (r1 overlaps w1 and w1 came first; w2 is behind r1, which it conflicts with)
    assert "W" in view.table.held and not view.table.free(["file:/d/"])  # put back


async def test_shared_readers_are_let_go_together_and_a_session_never_waits_for_itself(
        ) -> None:
    view = Recorder().view()
    mine = lease("q", "M")  # alice's, in session ""
    own = Ticket(number=0, machine="m2", agent="alice", session="", pid=1, resources=["q"],
                 shared=True,
                 terms=terms(["X"]))
    watched(view, KeyUpdate(lease_key("q", "M"), 3, encode_record(Held(mine))),
            KeyUpdate(ticket_key("own"), 4, encode_record(own)),  # not in its own way
            waiting_ticket(["q"], "r1", 5, shared=True),
            waiting_ticket(["q"], "r2", 6, shared=True))
    assert [w for w, _ in view.next_in_line(view.table.held["M"])] == ["r1", "r2"]


async def test_the_last_revision_under_a_root_is_what_the_watch_delivered() -> None:
    view = Recorder().view()
    watched(view, held("db", 3))
    assert view.root_last(root_token("db")) == 3
    mine = lease("db", "M", machine="m1")
    view.wrote(lease_key("db", "M"), 9, Held(mine), mine)  # not delivered by the watch yet
    assert view.root_last(root_token("db")) == 3
    watched(view, KeyUpdate(lease_key("db", "M"), 9, encode_record(Held(mine))))
    assert view.root_last(root_token("db")) == 9
    assert view.root_last(root_token("other")) == 0
    watched(view, waiting_ticket(["db"], "w", 10))  # tickets are under no root
    assert view.root_last(root_token("db")) == 9


async def test_a_lease_handed_over_to_a_waiter_here_goes_to_the_manager() -> None:
    handed: list[tuple[str, str]] = []
    seen = Recorder()
    view = seen.view()
    view._handed = lambda holding, waiter: handed.append((holding.lease.resource, waiter))
    grant = msgspec.structs.replace(lease("mine", "L", machine="m1"))
    view.apply(KeyUpdate(lease_key("mine", "L"), 3, encode_record(Held(grant, waiter="w"))))
    assert seen.found == ["mine"] and handed == []  # before the watch's first round ends
    view.synced.set()
    view.apply(KeyUpdate(lease_key("again", "L2"), 4, encode_record(Held(
        lease("again", "L2", machine="m1"), waiter="w"))))
    assert handed == [("again", "w")]


async def test_a_release_plans_its_end_the_grant_and_the_ticket_in_one_batch() -> None:
    view = Recorder().view()
    root = root_token("job")
    watched(view, held("job", 3), waiting_ticket(["job"], "w1", 4))
    holding = view.table.held["L1"]
    ended = Ended(reason="released", by="alice")
    ts = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    handover = plan(view, holding, ended, now=trio.current_time(), ts=ts, fresh=2.5)
    assert handover is not None and handover.waiters == ["w1"]
    end, grant, consumed = handover.writes
    assert (end.key, end.last, end.under) == (lease_key("job", "L1"), 3, "")
    assert grant.key == lease_key("job", holder_token("bob", "w1"))
    assert (grant.last, grant.under, grant.ttl) == (3, f"l.{root}.", 30 + HANDOVER_SLACK)
    record = msgspec.msgpack.decode(grant.value, type=Held | Ended)
    assert isinstance(record, Held) and record.waiter == "w1"
    assert (record.lease.lock_id, record.lease.machine, record.lease.session) == (
        "Tw10", "m2", "w1")
    assert record.lease.deadline_boottime == 100.0 + 30 + HANDOVER_SLACK
    assert (consumed.key, consumed.last, consumed.value) == (ticket_key("w1"), 4, b"")
    assert len({w.msg_id for w in handover.writes}) == 3


async def test_no_handover_to_an_old_ticket_or_one_not_written_lately(
        autojump_clock: trio.abc.Clock) -> None:
    view = Recorder().view()
    watched(view, held("job", 3), waiting_ticket(["job"], "old", 4, with_terms=False))
    holding = view.table.held["L1"]
    ended = Ended(reason="released", by="alice")
    assert plan(view, holding, ended, now=trio.current_time(), ts=NOW, fresh=2.5) is None
    watched(view, KeyUpdate(ticket_key("old"), 5, b""),  # withdrawn
            waiting_ticket(["job"], "quiet", 6))
    await trio.sleep(3)  # its machine has not written it again since
    assert plan(view, holding, ended, now=trio.current_time(), ts=NOW, fresh=2.5) is None
    watched(view, waiting_ticket(["job"], "quiet", 7))
    assert plan(view, holding, ended, now=trio.current_time(), ts=NOW, fresh=2.5)

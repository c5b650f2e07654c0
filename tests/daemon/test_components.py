"""The lease table, the group committer and the event hub on their own, on trio's virtual clock.

Each is driven directly (no socket, no server) over a real store and log in a
temporary directory; time is trio's autojump clock, so a 60-second ttl or a
5-second batching window takes no real time and is exact.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.events import EventHub, Filter, Subscriber, describe_live
from engramd.leases import LeaseManager
from engramd.locks import Holding, LockTable, Waiting
from engramd.protocol import AcquireLock, BadRequest, Heartbeat, Lagged, Lease, Unavailable
from engramd.protocol.messages import AnyServerMessage
from engramd.protocol.model import Context, ContextCreated, LockAcquired
from engramd.server import encode_event_push
from engramd.storage import Store
from engramd.wal.log import WriteAheadLog
from engramd.wal.record import Entry

WHEN = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
_push = msgspec.msgpack.Decoder(AnyServerMessage)


# -- the lease table ------------------------------------------------------------------


def lease(resource: str, agent: str, session: str) -> Lease:
    return Lease(resource=resource, holder=agent, lock_id=f"{resource}-{session}",
                 fencing_token=1, acquired_at=WHEN, expires_at=WHEN, ttl=60,
                 session=session, holder_pid=1)


async def test_a_waiter_is_served_when_first_in_line_on_every_resource() -> None:
    table = LockTable()
    table.install(Holding(lease("a", "x", "s1"), deadline=10))
    first, both = Waiting("y", "s2", 2, ["a"]), Waiting("z", "s3", 3, ["a", "b"])
    table.enqueue(first)
    table.enqueue(both)
    table.pump()
    assert not first.turn.is_set() and not both.turn.is_set()  # a is held
    table.remove(table.on("a")[0])
    table.pump()
    assert first.turn.is_set() and not both.turn.is_set()  # a is reserved for first
    assert not table.free(["a"]) and table.free(["b"])
    table.install(Holding(lease("a", "y", "s2"), deadline=20))
    table.unreserve(first)
    table.remove(table.on("a")[0])
    table.pump()
    assert both.turn.is_set()
    assert [c.resource.text for c in table.reserved[both]] == ["a", "b"]


async def test_holders_and_cycles_are_sessions_of_agents() -> None:
    table = LockTable()
    table.install(Holding(lease("x", "A", "s1"), deadline=10))
    table.install(Holding(lease("y", "B", "s2"), deadline=10))
    assert table.held_in(("A", "s1"), ["y", "x"]) is table.on("x")[0]
    assert table.held_in(("A", "s9"), ["x"]) is None  # another session of A
    assert table.held_in(("C", "s1"), ["x"]) is None  # the same session name, another agent
    table.enqueue(Waiting("A", "s1", 1, ["y"]))
    steps = table.cycle(("B", "s2"), ["x"])
    assert steps is not None
    assert [(resource, holding.lease.holder) for resource, holding in steps] == [
        ("x", "A"), ("y", "B")]
    table.dequeue(next(iter(table.line)))
    table.enqueue(Waiting("A", "s9", 1, ["y"]))  # A's other session waits: no cycle
    assert table.cycle(("B", "s2"), ["x"]) is None


async def test_the_next_deadline_is_the_earliest_holding() -> None:
    table = LockTable()
    assert table.next_deadline() == float("inf")
    table.install(Holding(lease("a", "x", "s"), deadline=30))
    table.install(Holding(lease("b", "x", "s"), deadline=20))
    assert table.next_deadline() == 20
    assert [h.lease.resource for h in table.expired(25)] == ["b"]


# -- a store and a log in a temporary directory ----------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[tuple[Store, WriteAheadLog]]:
    store = Store(os.path.join(tmp_path, "store"))
    wal = WriteAheadLog(os.path.join(tmp_path, "wal"), segment_bytes=1 << 20, sync=False)
    wal.recover(store.applied_seq, store.apply)
    yield store, wal
    wal.close()
    store.close()


def committer_over(storage: tuple[Store, WriteAheadLog], *, batch_size: int = 64,
                   window: float = 0.0) -> tuple[GroupCommitter, list[Entry]]:
    applied: list[Entry] = []
    store, wal = storage
    return GroupCommitter(wal, store, batch_size=batch_size, window=window,
                          checkpoint_bytes=1 << 30, on_applied=applied.extend,
                          on_aborted=lambda: None), applied


def context_created(name: str):  # type: ignore[no-untyped-def]
    """A build that creates context *name*; returns the seq it got."""
    def build(first_seq: int, ts: dt.datetime) -> tuple[Entry, int]:
        context = Context(id=name, display_name=name, agent_ids=["t"], pinned_units=[],
                          meta={}, created_at=ts, updated_at=ts)
        event = ContextCreated(seq=first_seq, ts=ts, context_id=name, context=context)
        return Entry(first_seq=first_seq, events=[event]), first_seq
    return build


@pytest.fixture
async def running(storage: tuple[Store, WriteAheadLog]
                  ) -> AsyncIterator[tuple[GroupCommitter, list[Entry]]]:
    committer, applied = committer_over(storage, window=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        yield committer, applied
        nursery.cancel_scope.cancel()


# -- the group committer ---------------------------------------------------------------


async def test_a_commit_queued_when_the_committer_stops_fails_instead_of_waiting(
        storage: tuple[Store, WriteAheadLog]) -> None:
    """A lease's end commits shielded; were its submission left queued when the daemon
    stops, it would wait for good and hold the stop up."""
    store = storage[0]
    committer, _ = committer_over(storage)
    writing, go_on = threading.Event(), threading.Event()
    apply = store.apply

    def slow_apply(entries: list[Entry]) -> None:  # a write in progress, held (a fault)
        writing.set()
        go_on.wait(10)
        apply(entries)

    store.apply = slow_apply  # type: ignore[method-assign]
    outcomes: list[str] = []

    async def commit(name: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5) as late:
            try:
                await committer.commit(context_created(name))
                outcomes.append(f"{name} written")
            except Unavailable as exc:
                outcomes.append(f"{name}: {exc}")
        if late.cancelled_caught:
            outcomes.append(f"{name} still waiting")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            run_scope = trio.CancelScope()

            async def run() -> None:
                with run_scope:
                    await committer.run()

            nursery.start_soon(run)
            nursery.start_soon(commit, "first")
            await trio.to_thread.run_sync(writing.wait, 10)
            nursery.start_soon(commit, "second")  # queued behind the write
            await trio.testing.wait_all_tasks_blocked()
            run_scope.cancel()  # the daemon stops
            go_on.set()
    assert outcomes == ["first written", "second: engramd is stopping"]
    with pytest.raises(Unavailable, match="stopping"):
        await committer.commit(context_created("third"))  # later ones at once


async def test_requests_that_arrive_together_share_one_batch_in_order(
        running: tuple[GroupCommitter, list[Entry]]) -> None:
    committer, applied = running
    seqs: dict[int, int] = {}

    async def one(n: int) -> None:
        seqs[n] = await committer.commit(context_created(f"c{n}"))

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(one, n)
    assert committer.stats.batches == 1 and committer.stats.entries == 20
    assert sorted(seqs.values()) == list(range(1, 21))
    assert [entry.first_seq for entry in applied] == list(range(1, 21))


async def test_a_failing_build_fails_only_its_own_request(
        running: tuple[GroupCommitter, list[Entry]]) -> None:
    committer, applied = running

    def refused(first_seq: int, ts: dt.datetime) -> tuple[Entry, int]:
        raise BadRequest("no")

    results: dict[int, object] = {}

    async def attempt(n: int, build) -> None:  # type: ignore[no-untyped-def]
        try:
            results[n] = await committer.commit(build)
        except BadRequest as exc:
            results[n] = exc

    async with trio.open_nursery() as nursery:
        for n, build in enumerate((context_created("a"), refused, context_created("b"))):
            nursery.start_soon(attempt, n, build)
    # (trio starts tasks in no promised order: the batch's order is the commits')
    assert isinstance(results[1], BadRequest) and {results[0], results[2]} == {1, 2}
    assert [entry.first_seq for entry in applied] == [1, 2]


async def test_under_load_a_batch_waits_the_window_to_fill(
        running: tuple[GroupCommitter, list[Entry]], autojump_clock: trio.abc.Clock) -> None:
    committer, _ = running
    async with trio.open_nursery() as nursery:  # a busy batch first (more than one request)
        for n in range(3):
            nursery.start_soon(committer.commit, context_created(f"busy{n}"))
    started = trio.current_time()
    await committer.commit(context_created("late"))
    assert trio.current_time() - started == pytest.approx(5.0)
    started = trio.current_time()
    await committer.commit(context_created("alone"))  # the last batch held one: no wait
    assert trio.current_time() - started < 0.001


async def test_a_batch_waits_only_for_as_many_requests_as_the_last_one_held(
        running: tuple[GroupCommitter, list[Entry]], autojump_clock: trio.abc.Clock) -> None:
    committer, _ = running
    async with trio.open_nursery() as nursery:  # three writers: a batch of three
        for n in range(3):
            nursery.start_soon(committer.commit, context_created(f"first{n}"))
    batches = committer.stats.batches
    started = trio.current_time()

    async def later(n: int) -> None:  # the same three, their next writes 0.1 s apart
        await trio.sleep(0.1 * n)
        await committer.commit(context_created(f"next{n}"))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(later, n)
    # Written when the third came (0.2 s), as one batch: not after the 5 s window.
    assert trio.current_time() - started == pytest.approx(0.2)
    assert committer.stats.batches == batches + 1


async def test_a_slow_write_leaves_the_event_loop_free(
        storage: tuple[Store, WriteAheadLog], monkeypatch: pytest.MonkeyPatch) -> None:
    committer, applied = committer_over(storage)
    wal = storage[1]
    entered, release = threading.Event(), threading.Event()
    append = wal.append

    def slow_append(*args: object) -> None:  # an fsync that takes its time
        entered.set()
        release.wait(30)
        append(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(wal, "append", slow_append)
    written: list[int] = []
    ticks = 0

    async def write() -> None:
        written.append(await committer.commit(context_created("slow")))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            nursery.start_soon(write)
            await trio.to_thread.run_sync(entered.wait)
            for _ in range(5):  # timers fire and other tasks run meanwhile
                await trio.sleep(0.001)
                ticks += 1
            assert ticks == 5 and written == [] and applied == []
            release.set()
            while not written:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert written == [1] and [entry.first_seq for entry in applied] == [1]


async def test_an_error_in_the_journal_thread_reaches_the_task_that_waits() -> None:
    from engramd.commit import JournalThread

    thread = JournalThread()
    thread.start()
    try:
        order: list[int] = []
        assert await thread.run(lambda: order.append(1) or 7) == 7

        def broken() -> None:
            raise OSError("disk on fire")

        with pytest.raises(OSError, match="disk on fire"):
            await thread.run(broken)
        with trio.CancelScope() as scope:
            scope.cancel()  # a job once given is waited for: it cannot be taken back
            assert await thread.run(lambda: order.append(2) or 8) == 8
        assert order == [1, 2]
    finally:
        thread.stop()


# -- leases on virtual time ---------------------------------------------------------------


async def test_a_lease_expires_after_its_ttl_and_the_waiter_gets_it(
        running: tuple[GroupCommitter, list[Entry]], storage: tuple[Store, WriteAheadLog],
        autojump_clock: trio.abc.Clock) -> None:
    committer, _ = running
    leases = LeaseManager(storage[0], committer, default_ttl=60, max_ttl=3600,
                          max_per_agent=10, max_waiters=10)
    alice = Caller(agent_id="alice", uid=0, pid=1, connection_id="conn:1@t")
    bob = Caller(agent_id="bob", uid=0, pid=2, connection_id="conn:2@t")
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        started = trio.current_time()
        (held,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60), alice)
        # No deadline of its own while waiting (wait=None): the clock can only jump to
        # the lease's expiry, never past a commit still running in its worker thread.
        (granted,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60, wait=None),
                                          bob)
        assert trio.current_time() - started == pytest.approx(60, abs=0.01)
        assert granted.holder == "bob" and granted.fencing_token > held.fencing_token
        assert leases.expired == 1
        nursery.cancel_scope.cancel()


# -- the event hub ------------------------------------------------------------------------


def subscriber(heartbeat: float = 5.0) -> Subscriber:
    return Subscriber(id=9, agent_id="t", filter=Filter(frozenset(), frozenset(), frozenset(),
                                                        frozenset(), {}),
                      cursor=0, heartbeat=heartbeat)


def created(seq: int) -> ContextCreated:
    context = Context(id=f"c{seq}", display_name="c", agent_ids=["t"], pinned_units=[],
                      meta={}, created_at=WHEN, updated_at=WHEN)
    return ContextCreated(seq=seq, ts=WHEN, context_id=context.id, context=context)


async def test_an_idle_subscription_gets_a_heartbeat_each_interval(
        storage: tuple[Store, WriteAheadLog], autojump_clock: trio.abc.Clock) -> None:
    hub = EventHub(storage[0], buffer=8, max_lag=100)
    pushes: list[tuple[float, object]] = []

    async def push(body: bytes) -> None:
        pushes.append((trio.current_time(), _push.decode(body)))

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(hub.serve, subscriber(heartbeat=5.0), push, encode_event_push)
        await trio.sleep(16)
        nursery.cancel_scope.cancel()
    assert [round(at - started, 3) for at, _ in pushes] == [5.0, 10.0, 15.0]
    assert all(isinstance(message, Heartbeat) for _, message in pushes)


async def test_live_events_reach_a_subscriber_in_order_and_a_stalled_one_lags_out(
        storage: tuple[Store, WriteAheadLog]) -> None:
    store, _ = storage
    hub = EventHub(store, buffer=2, max_lag=3)
    fast: list[object] = []
    release_slow = trio.Event()
    slow: list[object] = []

    async def push_fast(body: bytes) -> None:
        fast.append(_push.decode(body))

    async def push_slow(body: bytes) -> None:
        await release_slow.wait()
        slow.append(_push.decode(body))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.serve, subscriber(heartbeat=0), push_fast, encode_event_push)
        nursery.start_soon(hub.serve, subscriber(heartbeat=0), push_slow, encode_event_push)
        await trio.testing.wait_all_tasks_blocked()
        for seq in range(1, 9):
            event = created(seq)
            store.apply([Entry(first_seq=seq, events=[event])])
            hub.publish([describe_live(event)])
            await trio.testing.wait_all_tasks_blocked()
        assert [message.event.seq for message in fast] == list(range(1, 9))  # type: ignore[attr-defined]
        assert hub.detached_for_lag == 1
        release_slow.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert isinstance(slow[-1], Lagged) and slow[-1].head_seq == 8


async def test_an_event_not_in_the_journal_reaches_live_subscribers_only(
        storage: tuple[Store, WriteAheadLog]) -> None:
    """Cluster mode's lease events: numbered with the newest seq before them, moving no
    cursor, never read again from the store."""
    store, _ = storage
    hub = EventHub(store, buffer=8, max_lag=100)
    live: list[object] = []
    later: list[object] = []
    lease = Lease(resource="r", holder="alice", lock_id="L", fencing_token=3,
                  acquired_at=WHEN, expires_at=WHEN, ttl=30)

    async def push(into: list[object], body: bytes) -> None:
        into.append(_push.decode(body))

    def commit(seq: int) -> None:
        store.apply([Entry(first_seq=seq, events=[created(seq)])])
        hub.publish([describe_live(created(seq))])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.serve, subscriber(heartbeat=0), lambda body: push(live, body),
                           encode_event_push)
        await trio.testing.wait_all_tasks_blocked()
        commit(1)
        hub.publish_passing(LockAcquired(seq=0, ts=WHEN, context_id="", lease=lease))
        commit(2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hub.serve, subscriber(heartbeat=0), lambda body: push(later, body),
                           encode_event_push)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [(type(m.event).__name__, m.event.seq) for m in live] == [  # type: ignore[attr-defined]
        ("ContextCreated", 1), ("LockAcquired", 1), ("ContextCreated", 2)]
    assert [m.event.seq for m in later] == [1, 2]  # type: ignore[attr-defined]


async def test_a_release_and_the_grant_to_the_next_in_line_are_one_commit(
        running: tuple[GroupCommitter, list[Entry]], storage: tuple[Store, WriteAheadLog],
        autojump_clock: trio.abc.Clock) -> None:
    committer, applied = running
    leases = LeaseManager(storage[0], committer, default_ttl=60, max_ttl=3600,
                          max_per_agent=10, max_waiters=10)
    alice = Caller(agent_id="alice", uid=0, pid=1, connection_id="conn:1@t")
    bob = Caller(agent_id="bob", uid=0, pid=2, connection_id="conn:2@t")
    granted: list[Lease] = []

    async def bob_waits() -> None:
        granted.extend(await leases.acquire(AcquireLock(resources=["r"], ttl=60, wait=None),
                                            bob))

    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60), alice)
        nursery.start_soon(bob_waits)
        await trio.testing.wait_all_tasks_blocked()
        batches = committer.stats.batches
        await leases.release(held.lock_id, alice)
        await trio.testing.wait_all_tasks_blocked()
        assert committer.stats.batches == batches + 1  # one write, one fdatasync
        handover = applied[-1]
        assert [type(event).__name__ for event in handover.events] == [
            "LockReleased", "LockAcquired"]
        assert granted[0].holder == "bob" and granted[0].fencing_token == handover.last_seq
        assert leases.state("r").lease == granted[0]
        # An expiry hands over the same way.
        carol = Caller(agent_id="carol", uid=0, pid=3, connection_id="conn:3@t")
        later: list[Lease] = []
        carol_granted = trio.Event()

        async def carol_waits() -> None:
            later.extend(await leases.acquire(
                AcquireLock(resources=["r"], ttl=60, wait=None), carol))
            carol_granted.set()

        nursery.start_soon(carol_waits)
        await carol_granted.wait()  # at bob's expiry, once its commit (a thread) is done
        assert [type(event).__name__ for event in applied[-1].events] == [
            "LockExpired", "LockAcquired"]
        assert later[0].holder == "carol"
        nursery.cancel_scope.cancel()


async def test_two_ends_of_one_lease_in_one_batch_write_one(
        running: tuple[GroupCommitter, list[Entry]], storage: tuple[Store, WriteAheadLog],
        autojump_clock: trio.abc.Clock) -> None:
    committer, applied = running
    leases = LeaseManager(storage[0], committer, default_ttl=60, max_ttl=3600,
                          max_per_agent=10, max_waiters=10)
    alice = Caller(agent_id="alice", uid=0, pid=1, connection_id="conn:1@t")
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60), alice)
        async with trio.open_nursery() as both:  # submitted together: one batch
            both.start_soon(leases.release, held.lock_id, alice)
            both.start_soon(leases.break_lease, "r", "ops", "ops")
        ends = [event for entry in applied for event in entry.events
                if type(event).__name__ in ("LockReleased", "LockExpired")]
        assert len(ends) == 1
        assert leases.state("r").lease is None
        nursery.cancel_scope.cancel()


def test_a_late_end_of_a_lease_leaves_its_successor_stored(
        storage: tuple[Store, WriteAheadLog]) -> None:
    """A journal with an end of a lease after the next holder's grant (written by an
    older daemon's race) replays without losing that holder's lease."""
    from engramd.protocol import LockAcquired, LockExpired, LockReleased

    store, _ = storage
    first, second = lease("r", "a", "s1"), lease("r", "b", "s2")
    store.apply([Entry(first_seq=1, events=[LockAcquired(seq=1, ts=WHEN, context_id="",
                                                         lease=first)])])
    store.apply([Entry(first_seq=2, events=[
        LockReleased(seq=2, ts=WHEN, context_id="", lease=first, reason="released", by="a"),
        LockAcquired(seq=3, ts=WHEN, context_id="", lease=second)])])
    store.apply([Entry(first_seq=4, events=[LockExpired(seq=4, ts=WHEN, context_id="",
                                                        lease=first)])])
    assert [msgspec.msgpack.decode(raw, type=Lease) for raw in store.leases()] == [second]


def test_shared_leases_on_one_resource_are_stored_apart(
        storage: tuple[Store, WriteAheadLog]) -> None:
    from engramd.protocol import LockAcquired, LockReleased

    store, _ = storage
    one = msgspec.structs.replace(lease("r", "a", "s1"), shared=True)
    two = msgspec.structs.replace(lease("r", "b", "s2"), shared=True)
    store.apply([Entry(first_seq=1, events=[
        LockAcquired(seq=1, ts=WHEN, context_id="", lease=one),
        LockAcquired(seq=2, ts=WHEN, context_id="", lease=two)])])
    assert len(list(store.leases())) == 2
    store.apply([Entry(first_seq=3, events=[
        LockReleased(seq=3, ts=WHEN, context_id="", lease=one, reason="released", by="a")])])
    assert [msgspec.msgpack.decode(raw, type=Lease) for raw in store.leases()] == [two]


def test_a_lease_stored_before_shared_leases_ends_too(
        storage: tuple[Store, WriteAheadLog]) -> None:
    from engramd.protocol import LockReleased

    store, _ = storage
    old = lease("r", "a", "s1")
    store.db.put(b"l/r", msgspec.msgpack.encode(old))  # as an older engramd kept it
    store.apply([Entry(first_seq=1, events=[
        LockReleased(seq=1, ts=WHEN, context_id="", lease=old, reason="released", by="a")])])
    assert list(store.leases()) == []


# -- the contexts a write looks up ------------------------------------------------------


def test_stored_contexts_follow_applied_batches_and_stay_bounded(
        storage: tuple[Store, WriteAheadLog], monkeypatch: pytest.MonkeyPatch) -> None:
    from engramd.writes import StoredContexts

    store = storage[0]
    contexts = StoredContexts(store, size=2)
    assert contexts.get("c0") is None
    entries = [context_created(f"c{n}")(n + 1, dt.datetime.now(dt.UTC))[0] for n in range(3)]
    store.apply(entries)
    assert contexts.get("c0") is not None and contexts.get("c0").id == "c0"  # type: ignore[union-attr]
    renamed = msgspec.structs.replace(entries[1].events[0].context, display_name="renamed")  # type: ignore[union-attr]
    update = Entry(first_seq=4, events=[ContextCreated(seq=4, ts=renamed.created_at,
                                                       context_id="c1", context=renamed)])
    contexts.applied([update])  # what the committer reports once it is stored
    assert contexts.get("c1") == renamed
    for name in ("c0", "c1", "c2"):
        contexts.get(name)
    assert len(contexts._recent) == 2 and "c0" not in contexts._recent


# -- the recent units -------------------------------------------------------------------


def unit_entry(seq: int, context_id: str = "c", agent: str = "a",
               meta: dict[str, str] | None = None) -> Entry:
    from engramd.protocol.model import Unit, UnitCreated

    unit = Unit(id=f"u{seq}", seq=seq, context_id=context_id, agent_id=agent, type="MESSAGE",
                ts=WHEN, meta=meta or {}, payload=b"", relationships=[], uid=0, pid=0)
    return Entry(first_seq=seq, events=[UnitCreated(seq=seq, ts=WHEN, context_id=context_id,
                                                    unit=unit)])


def test_recent_units_take_a_batch_once_and_reload_an_evicted_context(
        storage: tuple[Store, WriteAheadLog]) -> None:
    from engramd.recent import RecentUnits

    store = storage[0]
    recent = RecentUnits(store, per_context=4, contexts=1)

    def newest(context_id: str, limit: int) -> tuple[list[str], int | None]:
        found = recent.newest(context_id, limit)
        assert found is not None
        raws, cursor = found
        return [msgspec.msgpack.decode(raw)["id"] for raw in raws], cursor

    first = [unit_entry(1)]
    store.apply(first)  # the journal thread has applied it ...
    assert newest("c", 3) == (["u1"], None)  # ... a read loads the context ...
    recent.applied(first)  # ... and then the followers hear of it: taken once
    assert newest("c", 3) == (["u1"], None)
    for seq in range(2, 7):
        batch = [unit_entry(seq)]
        store.apply(batch)
        recent.applied(batch)
    assert newest("c", 3) == (["u4", "u5", "u6"], 4)
    assert recent.newest("c", 4) is None  # more than is kept: the store answers
    store.apply([unit_entry(7, "d")])
    assert newest("d", 2) == (["u7"], None)  # loading d evicts c (one context kept)
    later = [unit_entry(8)]
    store.apply(later)
    recent.applied(later)  # c is not followed now ...
    assert newest("c", 3) == (["u5", "u6", "u8"], 5)  # ... and is read again whole


def test_the_mailbox_counts_a_batch_once_whenever_it_is_asked(
        storage: tuple[Store, WriteAheadLog]) -> None:
    """The journal thread writes a batch to the store before the mailbox (a follower) hears
    of it: a count taken in between must not take the batch in twice."""
    from engramd.mail import Mailbox

    store = storage[0]
    mailbox = Mailbox(store, writer=None)  # type: ignore[arg-type] (nothing is sent here)
    assert (mailbox.unread("bob"), mailbox.pending_count("bob")) == (0, 0)
    message = [unit_entry(1, meta={"to": "bob", "ack_required": "true"})]
    store.apply(message)  # written, the follower not yet told ...
    assert (mailbox.unread("bob"), mailbox.pending_count("bob")) == (0, 0)
    mailbox.applied(message)  # ... now it is: counted once
    assert (mailbox.unread("bob"), mailbox.pending_count("bob")) == (1, 1)
    broadcast = [unit_entry(2, meta={"to": "*"})]
    store.apply(broadcast)
    assert mailbox.newest_unread("bob", 5)[1] == 1
    mailbox.applied(broadcast)
    assert mailbox.unread("bob") == 2 and mailbox.unread("carol") == 1
    ack = [unit_entry(3, agent="bob", meta={"ack": "u1"})]
    store.apply(ack)
    mailbox.applied(ack)
    assert (mailbox.unread("bob"), mailbox.pending_count("bob")) == (2, 0)
    assert mailbox.pending_acks("bob") == []

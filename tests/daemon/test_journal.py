"""Units and contexts through the real daemon: durability, ordering, atomicity, validation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engram_cli.client import requests
from engram_cli.client.errors import BadRequest, Conflict, NotFound, TooLarge
from tests.conftest import ThreadedDaemon, connect, make_config, start_threaded


def test_a_unit_comes_back_as_written(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        unit = engram.create_unit("build-42", "tool_result", "all green",
                                  meta={"exit": "0"})
        again = engram.get_unit(unit.id)
    assert again == unit
    assert unit.type == "TOOL_RESULT" and unit.agent_id == "alice"
    assert unit.payload == b"all green" and unit.meta == {"exit": "0"}
    assert unit.ts.tzinfo is not None and unit.uid >= 0 and unit.pid > 0
    assert unit.id[14] == "7", "a UUIDv7"


def test_a_unit_reads_as_text_when_it_is_text(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        text, binary = (engram.get_unit(engram.create_unit("t", "MESSAGE", payload).id)
                        for payload in ("après le test ✓", b"\xff\x00"))
    assert text.text == "après le test ✓" and text.payload == "après le test ✓".encode()
    assert binary.text is None and binary.payload == b"\xff\x00"


def test_writing_to_a_new_context_creates_it_and_joins_the_agent(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as alice, connect(config, "bob") as bob:
        alice.create_unit("fresh", "MESSAGE", "hi")
        assert alice.get_context("fresh").agent_ids == ["alice"]
        bob.create_unit("fresh", "MESSAGE", "hello")
        context = bob.get_context("fresh")
    assert context.agent_ids == ["alice", "bob"]
    assert context.display_name == "fresh"


def test_restart_keeps_units_contexts_and_idempotency_keys(env: dict[str, str]) -> None:
    config = make_config(env)
    with start_threaded(config), connect(config) as engram:
        first = engram.create_unit("c1", "MESSAGE", "one", idempotency_key="k-1")
        second = engram.create_unit("c1", "REASONING", b"\x00\xff",
                                    relationships=[("RESPONDS_TO", first.id)])
        engram.update_context("c1", pin=[first.id], display_name="Context one",
                              set_meta={"team": "core"})
        before = engram.status().journal
    with start_threaded(config), connect(config) as engram:
        assert engram.get_units([first.id, second.id]).units == [first, second]
        context = engram.get_context("c1")
        assert context.pinned_units == [first.id] and context.display_name == "Context one"
        assert context.meta == {"team": "core"}
        retry = engram.create_units([requests.draft("c1", "MESSAGE", "one",
                                                    idempotency_key="k-1")])
        assert retry.units == [first] and retry.reused == [first.id]
        after = engram.status().journal
        next_unit = engram.create_unit("c1", "MESSAGE", "three")
    assert before is not None and after is not None
    assert after.units == before.units == 2
    assert next_unit.seq > second.seq


def test_a_batch_is_all_or_nothing(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        good = requests.draft("atomic", "MESSAGE", "fine")
        bad = requests.draft("atomic", "MESSAGE", "points nowhere",
                             relationships=[("CAUSES", "no-such-unit")])
        with pytest.raises(BadRequest, match="unknown unit no-such-unit"):
            engram.create_units([good, bad])
        with pytest.raises(NotFound):
            engram.get_context("atomic")
        created = engram.create_units([good, good])
    assert [unit.seq for unit in created.units] == sorted(unit.seq for unit in created.units)


def test_relationships_inside_one_batch_are_not_allowed_forward(
        threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        first = engram.create_unit("r", "MESSAGE", "a")
        second = engram.create_unit("r", "MESSAGE", "b", relationships=[("CAUSES", first.id)])
        found = engram.related_units(first.id, direction="in")
    assert [(e.source, e.type, e.target) for e in found.edges] == [
        (second.id, "CAUSES", first.id)]
    assert {unit.id for unit in found.units} == {first.id, second.id}


@pytest.mark.parametrize("draft, error, message", [
    ({"type": "NOPE"}, BadRequest, "unknown unit type 'NOPE'"),
    ({"relationships": [("LIKES", "x")]}, BadRequest, "unknown relationship type"),
    ({"relationships": [("CAUSES", "missing")]}, BadRequest, "unknown unit missing"),
    ({"context_id": ""}, BadRequest, "bad context id"),
    ({"context_id": "has space"}, BadRequest, "bad context id"),
    ({"context_id": "x" * 200}, BadRequest, "bad context id"),
    ({"payload": b"x" * 5000}, TooLarge,
     "payload of 5000 bytes exceeds the limit of 4096 bytes \\(limits.max_payload_bytes"),
    ({"meta": {"k" * 200: "v"}}, BadRequest, "metadata key"),
    ({"meta": {"k": "v" * 5000}}, BadRequest, "metadata value"),
    ({"meta": {"": "v"}}, BadRequest, "metadata key"),
    ({"idempotency_key": ""}, BadRequest, "idempotency key"),
])
def test_bad_units_get_clear_errors(env: dict[str, str], draft: dict[str, object],
                                    error: type[Exception], message: str) -> None:
    config = make_config(env, **{"limits.max_payload_bytes": "4096"})
    fields: dict[str, object] = {"context_id": "v", "type": "MESSAGE", "payload": b"p"}
    fields.update(draft)
    with start_threaded(config), connect(config) as engram:
        with pytest.raises(error, match=message):
            engram.create_units([requests.draft(**fields)])  # type: ignore[arg-type]
        engram.ping()  # the daemon carries on


def test_too_many_units_in_one_request(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_batch_units": "3"})
    with start_threaded(config), connect(config) as engram, \
            pytest.raises(TooLarge, match="4 units in one request, limit 3"):
        engram.create_units([requests.draft("c", "MESSAGE", "x")] * 4)


def test_list_pages_back_and_forward_with_filters(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as alice, connect(config, "bob") as bob:
        written = []
        for number in range(10):
            writer = alice if number % 2 else bob
            written.append(writer.create_unit("paged", "TOOL_CALL" if number < 5 else "MESSAGE",
                                              f"n{number}"))
        newest = alice.list_units("paged", limit=4)
        assert newest.units == written[-4:] and newest.next_cursor == written[-4].seq
        older = alice.list_units("paged", limit=4, before=newest.next_cursor)
        assert older.units == written[2:6]
        oldest = alice.list_units("paged", limit=4, before=older.next_cursor)
        assert oldest.units == written[:2] and oldest.next_cursor is None
        forward = alice.list_units("paged", limit=3, after=written[3].seq)
        assert forward.units == written[4:7] and forward.next_cursor == written[6].seq
        assert alice.list_units("paged", reverse=True, limit=2).units == written[:-3:-1]
        assert alice.list_units("paged", agents=["bob"]).units == written[0::2]
        assert alice.list_units("paged", types=["tool_call"]).units == written[:5]
        since = alice.list_units("paged", since=written[7].ts).units
        assert since == written[7:]
        assert alice.list_units("paged", until=written[1].ts).units == written[:2]
        with pytest.raises(NotFound, match="no context nothing-here"):
            alice.list_units("nothing-here")
        # The newest seq of all is in range when no bound is given, and a bound is a
        # seq (a negative one was an internal error).
        assert alice.list_units("paged", after=0, limit=100).units == written
        assert alice.list_units("paged", before=written[-1].seq + 1, limit=1).units == \
            written[-1:]
        for bound in ({"before": -1}, {"after": -5}):
            with pytest.raises(BadRequest, match="seqs: 0 or more"):
                alice.list_units("paged", **bound)  # type: ignore[arg-type]
        alice.ping()


def test_contexts_create_update_and_list(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        created = engram.create_context("proj-1", display_name="Project", meta={"a": "1"})
        assert created.agent_ids == ["alice"]
        with pytest.raises(Conflict, match="already exists"):
            engram.create_context("proj-1")
        generated = engram.create_context()
        assert generated.id.startswith("ctx-")
        unit = engram.create_unit("proj-1", "MESSAGE", "pin me")
        updated = engram.update_context("proj-1", add_agents=["bob"], remove_agents=["alice"],
                                        pin=[unit.id], set_meta={"b": "2"}, unset_meta=["a"])
        assert updated.agent_ids == ["bob"] and updated.pinned_units == [unit.id]
        assert updated.meta == {"b": "2"} and updated.updated_at > created.updated_at
        assert engram.update_context("proj-1", unpin=[unit.id]).pinned_units == []
        with pytest.raises(NotFound):
            engram.update_context("proj-1", pin=["no-such-unit"])
        with pytest.raises(NotFound):
            engram.get_context("nope")
        ids = [context.id for context in engram.list_contexts().contexts]
        assert ids == sorted(ids) and "proj-1" in ids
        page = engram.list_contexts(limit=1)
        assert len(page.contexts) == 1 and page.next_cursor == page.contexts[0].id
        assert [c.id for c in engram.list_contexts(prefix="proj").contexts] == ["proj-1"]


def test_concurrent_writers_keep_per_context_order(env: dict[str, str]) -> None:
    """10,000 units from several writers come back in order, none missing, none doubled."""
    config = make_config(env)
    writers, per_writer = 4, 2500
    with start_threaded(config):
        def write(number: int) -> None:
            with connect(config, f"w{number}") as engram:
                for index in range(per_writer):
                    engram.create_unit(f"ctx-{number % 2}", "MESSAGE", f"{number}:{index}",
                                       meta={"writer": str(number), "n": str(index)})

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
            assert not thread.is_alive()
        with connect(config) as engram:
            seen: dict[str, list[int]] = {}
            total = 0
            for context_id in ("ctx-0", "ctx-1"):
                cursor = 0
                seqs = []
                while True:
                    page = engram.list_units(context_id, after=cursor, limit=1000)
                    for unit in page.units:
                        seqs.append(unit.seq)
                        seen.setdefault(unit.meta["writer"], []).append(int(unit.meta["n"]))
                    total += len(page.units)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                assert seqs == sorted(set(seqs))
            assert engram.status().journal.units == total  # type: ignore[union-attr]
    assert total == writers * per_writer
    for numbers in seen.values():
        assert numbers == list(range(per_writer))


def test_torn_tail_is_repaired_on_start(env: dict[str, str]) -> None:
    config = make_config(env)
    with start_threaded(config), connect(config) as engram:
        kept = [engram.create_unit("t", "MESSAGE", f"u{i}") for i in range(3)]
    # the clean stop flushed the store; make it replay by removing its checkpoint
    segment = sorted(Path(config.data_dir, "wal").glob("*.wal"))[-1]
    with segment.open("ab") as file:
        file.write(b"\x00\x00\x01\x00garbage-from-a-torn-write")
    with start_threaded(config), connect(config) as engram:
        assert engram.get_units([u.id for u in kept]).units == kept
        engram.create_unit("t", "MESSAGE", "after repair")


def test_an_import_keeps_ids_and_times_and_skips_units_already_here(
        threaded_daemon: ThreadedDaemon) -> None:
    import datetime as dt

    from engramd.protocol import UnitOrigin

    then = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    kept = UnitOrigin(id="01a00000-0000-7000-8000-000000000001", ts=then)
    reply_to = UnitOrigin(id="01a00000-0000-7000-8000-000000000002", ts=then)
    with connect(threaded_daemon.config, "admin") as engram:
        first = engram.import_units(
            [requests.draft("old", "MESSAGE", "kept"),
             requests.draft("old", "MESSAGE", "reply",
                            relationships=[("RESPONDS_TO", kept.id)]),  # within the batch
             requests.draft("old", "MESSAGE", "kept again")],  # the same id twice: once
            ["alice", "bob", "alice"], [kept, reply_to, kept])
        assert [u.id for u in first.units] == [kept.id, reply_to.id, kept.id]
        assert first.reused == [kept.id]
        assert first.units[0].ts == then and first.units[0].agent_id == "alice"
        assert first.units[1].seq > first.units[0].seq  # seqs are this journal's
        again = engram.import_units([requests.draft("elsewhere", "MESSAGE", "kept")],
                                    ["alice"], [kept])
        assert again.reused == [kept.id] and again.units == [first.units[0]]
        assert engram.get_unit(kept.id).payload == b"kept"
        with pytest.raises(BadRequest, match="an imported unit's id must be a UUID"):
            engram.import_units([requests.draft("old", "MESSAGE", "x")], ["alice"],
                                [UnitOrigin(id="not-a-uuid", ts=then)])
        with pytest.raises(BadRequest, match="1 origins for 2 units"):
            engram.import_units([requests.draft("old", "MESSAGE", "x")] * 2,
                                ["alice"] * 2, [kept])


def test_a_unit_imported_before_ids_were_kept_is_found_by_its_key(
        threaded_daemon: ThreadedDaemon) -> None:
    """Imports used to give new ids, with the old id as the idempotency key: importing
    the same file now writes nothing, and relationships to the old id follow the key."""
    import datetime as dt

    from engramd.protocol import UnitOrigin

    old = UnitOrigin(id="01a00000-0000-7000-8000-00000000000a", ts=dt.datetime.now(dt.UTC))
    later = UnitOrigin(id="01a00000-0000-7000-8000-00000000000b", ts=old.ts)
    with connect(threaded_daemon.config) as engram:
        (copy,) = engram.import_units(
            [requests.draft("legacy", "MESSAGE", "one", idempotency_key=old.id)],
            ["alice"]).units
        assert copy.id != old.id
        result = engram.import_units(
            [requests.draft("legacy", "MESSAGE", "one", idempotency_key=old.id),
             requests.draft("legacy", "MESSAGE", "two", idempotency_key=later.id,
                            relationships=[("CAUSES", old.id)])],
            ["alice", "alice"], [old, later])
    assert result.reused == [copy.id]
    assert [(r.type, r.target) for r in result.units[1].relationships] == [("CAUSES", copy.id)]


def test_the_newest_units_from_memory_match_the_store(threaded_daemon: ThreadedDaemon) -> None:
    """``unit.list`` without filters is answered from the recent-units cache; a filter that
    matches everything reads the store. Both must give the same page and cursor, from a
    context's first unit to well past what the cache keeps, in both orders."""
    from engramd.protocol import UNIT_TYPES
    from engramd.recent import PER_CONTEXT

    with connect(threaded_daemon.config, "alice") as alice:
        def same(context_id: str) -> None:
            for limit in (1, 7, 50, PER_CONTEXT - 1, PER_CONTEXT, 500):
                for reverse in (False, True):
                    fast = alice.list_units(context_id, limit=limit, reverse=reverse)
                    slow = alice.list_units(context_id, limit=limit, reverse=reverse,
                                            types=list(UNIT_TYPES))
                    assert [u.id for u in fast.units] == [u.id for u in slow.units]
                    assert fast.next_cursor == slow.next_cursor, (limit, reverse)

        alice.create_unit("hot", "MESSAGE", "first")
        same("hot")  # loaded with one unit: the whole context
        for batch in range(6):
            alice.create_units([requests.draft(context, "REASONING", f"{context} {batch} {n}")
                                for n in range(40) for context in ("hot", "other")])
            same("hot")
        same("other")  # loaded when already past what is kept
        written = [alice.create_unit("other", "ERROR", f"late {n}") for n in range(3)]
        page = alice.list_units("other", limit=3)
        assert [u.id for u in page.units] == [u.id for u in written]
        same("other")

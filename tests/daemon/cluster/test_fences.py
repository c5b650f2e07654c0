"""Fence marks (engramd.cluster.fences) on their own: which fenced writes they refuse,
and how the store keeps them. The window they close, on a real cluster, is tested in
tests/daemon/cluster/test_cluster_leases.py (a holder paused between check and write)."""

from __future__ import annotations

import datetime as dt
import os

import pytest

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")

from engramd.cluster.fences import (
    FenceMarks,
    decode_mark,
    encode_mark,
    from_header,
    header_value,
    mark_of,
)
from engramd.protocol import Conflict, Lease
from engramd.protocol.model import Context, ContextCreated
from engramd.storage import Store
from engramd.wal.record import Entry

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def lease(resource: str, token: int, session: str, agent: str = "alice") -> Lease:
    return Lease(resource=resource, holder=agent, lock_id=f"L{token}", fencing_token=token,
                 acquired_at=NOW, expires_at=NOW, ttl=30, session=session)


def test_an_older_token_is_refused_once_a_newer_conflicting_lease_fenced_a_write() -> None:
    marks = FenceMarks()
    marks.applied([mark_of(lease("report", 12, "conn:2@b", agent="bob"))])
    with pytest.raises(Conflict, match="stale fence: token 10 on report has ended"):
        marks.check(lease("report", 10, "conn:1@a"))
    marks.check(lease("report", 13, "conn:1@a"))  # a newer lease: its write goes on
    marks.check(lease("other", 5, "conn:1@a"))  # another resource: not in the way


def test_a_directory_and_a_file_in_it_are_in_each_other_s_way() -> None:
    marks = FenceMarks()
    marks.applied([mark_of(lease("file:/w/src/", 12, "conn:2@b", agent="bob"))])
    with pytest.raises(Conflict, match="a newer lease on file:/w/src/"):
        marks.check(lease("file:/w/src/app.py", 10, "conn:1@a"))
    marks.check(lease("file:/w/docs/a.md", 10, "conn:1@a"))


def test_a_session_s_own_newer_lease_refuses_nothing() -> None:
    """A session may hold src/ and src/app.py at once and write with either."""
    marks = FenceMarks()
    marks.applied([mark_of(lease("file:/w/src/app.py", 11, "conn:1@a"))])
    marks.check(lease("file:/w/src/", 10, "conn:1@a"))


def test_the_marks_of_the_batch_being_built_count_and_go_out_with_it() -> None:
    marks = FenceMarks()
    marks.check(lease("report", 12, "conn:2@b", agent="bob"))
    with pytest.raises(Conflict):
        marks.check(lease("report", 10, "conn:1@a"))
    taken = marks.take()
    assert [mark.token for mark in taken] == [12] and marks.pending == []
    assert from_header(header_value(taken)) == taken
    assert from_header("") == []


def test_the_store_keeps_each_mark_s_largest_token(tmp_path: os.PathLike[str]) -> None:
    store = Store(os.path.join(tmp_path, "store"))
    newer, older = (mark_of(lease("report", token, "conn:1@a")) for token in (12, 10))
    context = Context(id="c", display_name="c", agent_ids=["alice"], pinned_units=[],
                      meta={}, created_at=NOW, updated_at=NOW)
    for seq, mark in enumerate((newer, older), start=1):
        event = ContextCreated(seq=seq, ts=NOW, context_id="c", context=context)
        store.apply([Entry(first_seq=seq, events=[event])], stream_seq=seq,
                    fences={mark.key: (mark.token, encode_mark(mark))})
    store.close()
    store = Store(os.path.join(tmp_path, "store"))
    assert [decode_mark(raw) for raw in store.fence_marks()] == [newer]
    store.close()

"""What the endpoints answer, where it is not a protocol reply as it stands: msgspec
types that the routes build their answers from and ``/openapi.json`` describes, so the
two cannot drift apart.

A unit is :class:`UnitView`, the ``engram unit get --json`` form: its payload as text
(``payload``) when it is UTF-8, else ``payload_base64``. Every other reply that is a
protocol reply as it stands (``ContextFound``, ``TaskPage``, ...) is answered without
its wire envelope (``msg``, ``id``) and described from the protocol's own type.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from engramd.protocol import (
    Lease,
    LockAcquired,
    LockExpired,
    LockReleased,
    LockState,
    RelatedEdge,
    RelatedFound,
    Relationship,
    SearchHit,
    Unit,
)


class UnitView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A unit: ``payload`` when it is UTF-8 text, else ``payload_base64``."""

    id: str
    seq: int
    context_id: str
    agent_id: str
    type: str
    ts: dt.datetime
    meta: dict[str, str]
    payload: str | None = None
    payload_base64: str | None = None
    relationships: list[Relationship]
    uid: int
    pid: Annotated[int, msgspec.Meta(description=(
        "The writer's process: 0 for a unit written over HTTP (no process of the daemon's "
        "machine wrote it)"))]

    rules: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["payload"]}, {"required": ["payload_base64"]}]}

    @classmethod
    def of(cls, unit: Unit) -> UnitView:
        try:
            text, encoded = unit.payload.decode("utf-8"), None
        except UnicodeDecodeError:
            text, encoded = None, base64.b64encode(unit.payload).decode()
        return cls(id=unit.id, seq=unit.seq, context_id=unit.context_id,
                   agent_id=unit.agent_id, type=unit.type, ts=unit.ts, meta=unit.meta,
                   payload=text, payload_base64=encoded, relationships=unit.relationships,
                   uid=unit.uid, pid=unit.pid)


def units(found: list[Unit]) -> list[UnitView]:
    return [UnitView.of(unit) for unit in found]


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``ready`` with the daemon's version and instance (200); else (503) the daemon's
    state, or ``unavailable`` and the reason."""

    status: str
    daemon_version: str | None = None
    instance_id: str | None = None
    reason: str | None = None


class UnitsWritten(msgspec.Struct):
    units: list[UnitView]
    """In the order of the drafts."""
    reused: list[str]
    """Ids of units returned for an idempotency key already used, not written again."""


class UnitsPage(msgspec.Struct):
    units: list[UnitView]
    next_cursor: int | None
    """Give as ``cursor`` (or ``before``; ``after`` when paging forward) for the next
    page; null at the end."""


class LeasesGranted(msgspec.Struct):
    leases: list[Lease]


class LeaseView(msgspec.Struct):
    lease: Lease


class LockList(msgspec.Struct):
    locks: list[LockState]


class LockHistoryView(msgspec.Struct):
    events: list[LockAcquired | LockReleased | LockExpired]
    """Oldest first, as journaled (renewals left out)."""
    next_cursor: int | None
    """Give as ``after`` for the next page (a page may hold fewer than ``limit`` events
    and still have one: a request walks a bounded stretch of the journal); null at the
    end."""


class Broken(msgspec.Struct):
    broken: str
    """The resource whose lease was broken."""
    reason: str


class Released(msgspec.Struct):
    released: str
    """The lock id."""
    resource: str


class Ticket(msgspec.Struct):
    ticket: str
    expires_in: float
    """Seconds it may wait for its stream: 30, or less when the JWT it was issued for
    expires sooner."""


class HitView(msgspec.Struct, kw_only=True):
    unit_id: str
    seq: int
    score: float | None
    """null when the query had no words (filters alone)."""
    snippet: str
    bm25: float | None = None
    similarity: float | None = None
    unit: UnitView | None
    """null for a unit gone from the store since it was indexed."""


class SearchPage(msgspec.Struct):
    total: int
    hits: list[HitView]


def hit(found: SearchHit, ranked: bool, unit: Unit | None) -> HitView:
    return HitView(unit_id=found.unit_id, seq=found.seq,
                   score=found.score if ranked else None, snippet=found.snippet,
                   bm25=found.bm25, similarity=found.similarity,
                   unit=UnitView.of(unit) if unit is not None else None)


class Related(msgspec.Struct):
    root: str
    edges: list[RelatedEdge]
    units: list[UnitView]
    """The root and every unit an edge touches."""

    @classmethod
    def of(cls, found: RelatedFound) -> Related:
        return cls(root=found.root, edges=found.edges, units=units(found.units))


class InboxPage(msgspec.Struct):
    messages: list[UnitView]
    """Oldest first."""
    unread: int
    """Messages still unread after these."""


# -- the streams' items (the ``watch --json`` forms) ---------------------------------


class UnitCreatedView(msgspec.Struct, kw_only=True, tag_field="kind", tag="unit.created"):
    seq: int
    ts: dt.datetime
    context_id: str
    unit: UnitView


class HeartbeatView(msgspec.Struct, kw_only=True, tag_field="kind", tag="heartbeat"):
    head_seq: int
    """The journal's newest seq as far as the stream knows."""
    cursor: int
    """Everything up to here was considered for this stream."""
    daemon: Literal["up", "away"] = "up"
    """``away`` while the stream waits for engramd to come back (it resumes, nothing
    lost): a page shows the daemon as down rather than the stream as live."""


class StreamError(msgspec.Struct, kw_only=True, tag_field="kind", tag="error"):
    """The last item of a stream that ends on an error."""

    code: str
    message: str


__all__ = [
    "Health", "HeartbeatView", "HitView", "InboxPage",
    "LeaseView", "LeasesGranted", "LockHistoryView", "LockList", "Readiness", "Related", "Released",
    "SearchPage", "StreamError", "Ticket", "UnitCreatedView", "UnitView", "UnitsPage",
    "UnitsWritten", "hit", "units",
]

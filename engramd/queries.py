"""Reads: units, relationships, contexts, search, and where a subscription starts.

Everything here reads the store, which only ever holds durable changes (the
write path is :mod:`engramd.writes`), and returns plain values; the dispatcher
builds the replies. Units travel as the stored bytes, never decoded on the way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from engramd import validate
from engramd.caller import Caller
from engramd.embedding import EXTRA_HINT
from engramd.events import EventHub, Filter, Subscriber
from engramd.indexer import Indexer
from engramd.marks import LocalMarks, Marks
from engramd.protocol import (
    BadRequest,
    ListUnits,
    LockHistory,
    NotFound,
    RelatedEdge,
    Search,
    SearchHit,
    Subscribe,
    TooLarge,
)
from engramd.protocol.bounds import (
    DIRECTIONS,
    INT64_MAX,
    MAX_DEPTH,
    MAX_PAGE,
    MAX_PAGE_BYTES,
    MAX_QUERY_CHARS,
    MAX_SEARCH_PAGE,
    MIN_HEARTBEAT,
    SEARCH_MODES,
)
from engramd.protocol.model import EVENT_KINDS, UNIT_ID_LENGTH, Context, LockEvent, Unit
from engramd.recent import RecentUnits
from engramd.search import Hit, QueryError, plain_query
from engramd.storage import Store, seq_from

_context_decoder = msgspec.msgpack.Decoder(Context)
_lease_event = msgspec.msgpack.Decoder(LockEvent)
SHOWN_CANDIDATES = 5
"""Ids an ambiguous prefix's error names."""
MAX_EDGES = 10_000
HISTORY_WALK = 50_000
"""Events of the journal one ``lock.history`` request walks at most (units mostly,
passed over unread): the daemon serves others between pages."""


FUSION_DEPTH = 100
"""Hits taken from each side of a hybrid search before fusing them."""
RRF_K = 60
"""Reciprocal-rank fusion's constant (Cormack et al.): a hit's score is the sum over
the sides that found it of 1 / (RRF_K + its rank there)."""


def fuse(keyword: list[Hit], semantic: list[Hit]) -> list[SearchHit]:
    """Hybrid hits: both sides' ranks fused, best first (then newest), each hit with
    the scores of the sides that found it."""
    fused: dict[int, dict[str, Any]] = {}
    for side, hits in (("bm25", keyword), ("similarity", semantic)):
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.seq, {"unit_id": hit.unit_id, "score": 0.0,
                                               "snippet": "", "bm25": None,
                                               "similarity": None})
            entry["score"] += 1 / (RRF_K + rank)
            entry[side] = round(hit.score, 6)
            entry["snippet"] = entry["snippet"] or hit.snippet
    ranked = sorted(fused.items(), key=lambda item: (-item[1]["score"], -item[0]))
    return [SearchHit(unit_id=entry["unit_id"], seq=seq, score=round(entry["score"], 6),
                      snippet=entry["snippet"], bm25=entry["bm25"],
                      similarity=entry["similarity"]) for seq, entry in ranked]


class UnitHeader(msgspec.Struct):
    """A stored unit's id and the fields filters look at, decoded without the payload."""

    id: str
    agent_id: str
    type: str
    ts: dt.datetime


unit_header = msgspec.msgpack.Decoder(UnitHeader).decode


def _micros(value: dt.datetime | None) -> int | None:
    value = aware(value)
    return None if value is None else int(value.timestamp() * 1_000_000)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A request's time as one stored times compare with: without an offset, it is the
    daemon's local time (the protocol's ``Timestamp``)."""
    if value is None or value.tzinfo is not None:
        return value
    try:
        return value.astimezone()
    except (OverflowError, ValueError):
        # At the ends of time (year 1, year 9999) an offset moves nothing worth it.
        return value.replace(tzinfo=dt.UTC)


def raw_units(encoded: Iterable[bytes | None]) -> list[Unit]:
    """Stored unit bytes, sent on as they are: msgspec embeds Raw values verbatim."""
    return cast(list[Unit], [msgspec.Raw(data) for data in encoded if data is not None])


@dataclass(frozen=True)
class Related:
    """A unit and the relationships around it, to the requested depth."""

    root: str
    edges: list[RelatedEdge]
    units: list[Unit]


def walk(types: list[str], direction: str, depth: int) -> set[str]:
    """The relationship types of a walk (canonical), its direction and depth checked."""
    if direction not in DIRECTIONS:
        raise BadRequest("direction must be out, in or both")
    if not 1 <= depth <= MAX_DEPTH:
        raise BadRequest(f"depth must be 1 to {MAX_DEPTH}")
    return {validate.relationship_type(kind) for kind in types}


class Queries:
    def __init__(self, store: Store, hub: EventHub, indexer: Indexer,
                 heartbeat_seconds: float, recent: RecentUnits) -> None:
        self.store = store
        self.recent = recent
        self.hub = hub
        self.indexer = indexer
        self.heartbeat_seconds = heartbeat_seconds
        self.marks: Marks = LocalMarks(store)
        """Where named cursors are shared (cluster mode: :mod:`engramd.cluster.marks`)."""

    # -- units ----------------------------------------------------------------------

    def get_units(self, unit_ids: list[str]) -> tuple[list[Unit], list[str]]:
        """The units found, in request order, and the ids that were not."""
        if len(unit_ids) > MAX_PAGE:
            raise TooLarge(f"{len(unit_ids)} ids in one request, limit {MAX_PAGE}")
        found = self.store.units_by_id([validate.unit_id(unit_id) for unit_id in unit_ids])
        missing = [unit_id for unit_id, raw in zip(unit_ids, found, strict=True) if raw is None]
        return raw_units(found), missing

    def resolve_unit_ids(self, prefixes: list[str]) -> list[str]:
        """The one unit id each prefix names (see :class:`ResolveUnitIds`)."""
        resolved = []
        for given in prefixes:
            prefix = validate.unit_id_prefix(given)
            candidates = self.store.unit_ids_with_prefix(prefix, SHOWN_CANDIDATES + 1)
            if not candidates:
                raise NotFound(self._no_unit(prefix) if len(prefix) == UNIT_ID_LENGTH
                               else f"no unit id begins with {given}")
            if len(candidates) > 1:
                shown = ", ".join(candidates[:SHOWN_CANDIDATES])
                more = " and more" if len(candidates) > SHOWN_CANDIDATES else ""
                raise BadRequest(f"unit id prefix {given} is ambiguous: {shown}{more}")
            resolved.append(candidates[0])
        return resolved

    def _no_unit(self, unit_id: str) -> str:
        """Why there is no unit *unit_id*: never written, or archived by retention."""
        archive = self.store.archived(unit_id)
        if archive is None:
            return f"no unit {unit_id}"
        return (f"no unit {unit_id}: retention removed it; it is archived in {archive} "
                "('engram unit import' brings it back)")

    def list_units(self, request: ListUnits) -> tuple[list[Unit], int | None]:
        """A page of a context's units, and the cursor of the next page (None at the end)."""
        validate.context_id(request.context_id)
        if not 1 <= request.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        if request.before is not None and request.after is not None:
            raise BadRequest("give before or after, not both")
        if min(request.before or 0, request.after or 0) < 0:
            raise BadRequest("before and after are seqs: 0 or more")
        types = {validate.unit_type(kind) for kind in request.types}
        # Contexts are never deleted: one whose units are kept in memory exists.
        if (not self.recent.holds(request.context_id)
                and self.store.context(request.context_id) is None):
            # An empty page would hide a misspelt name.
            raise NotFound(f"no context {request.context_id}")
        agents = set(request.agents)
        since, until = aware(request.since), aware(request.until)
        filtering = bool(types or agents or since or until)
        if not filtering and request.before is None and request.after is None:
            newest = self.recent.newest(request.context_id, request.limit)
            if newest is not None and sum(map(len, newest[0])) <= MAX_PAGE_BYTES:
                found, cursor = newest
                if request.reverse:
                    found.reverse()
                return raw_units(found), cursor
        forward = request.after is not None
        rows = self.store.scan_context(request.context_id, after=request.after,
                                       before=request.before, newest_first=not forward)
        picked: list[bytes] = []
        last_key = b""
        more = False
        size = 0
        for key, raw in rows:
            if filtering:
                header = unit_header(raw)
                if ((types and header.type not in types)
                        or (agents and header.agent_id not in agents)
                        or (since and header.ts < since)
                        or (until and header.ts > until)):
                    continue
            if len(picked) == request.limit or (picked and size + len(raw) > MAX_PAGE_BYTES):
                more = True
                break
            picked.append(raw)
            size += len(raw)
            last_key = key
        next_cursor = seq_from(last_key) if more else None
        if forward == request.reverse:  # stored order is the wrong way round
            picked.reverse()
        return raw_units(picked), next_cursor

    def related(self, unit_id: str, types: list[str], direction: str, depth: int) -> Related:
        """Units linked to *unit_id* by relationships of *types*, breadth first."""
        root = validate.unit_id(unit_id)
        if self.store.unit_location(root) is None:
            raise NotFound(self._no_unit(root))
        kinds = walk(types, direction, depth)
        directions = {"out": "o", "in": "i", "both": "oi"}[direction]
        edges: list[RelatedEdge] = []
        seen_edges: set[tuple[str, str, str]] = set()
        visited = {root}
        frontier = [root]
        for level in range(1, depth + 1):
            following = []
            for current in frontier:
                for way in directions:
                    for source, kind, target in self.store.relationships(current, way):
                        if (kinds and kind not in kinds) or (source, kind, target) in seen_edges:
                            continue
                        seen_edges.add((source, kind, target))
                        edges.append(RelatedEdge(source=source, type=kind, target=target,
                                                 depth=level))
                        other = target if source == current else source
                        if other not in visited:
                            visited.add(other)
                            following.append(other)
                        if len(edges) >= MAX_EDGES:
                            raise TooLarge(f"more than {MAX_EDGES} relationships; lower the depth")
            frontier = following
        return Related(root, edges, raw_units(self.store.units_by_id(sorted(visited))))

    def lock_history(self, request: LockHistory) -> tuple[list[LockEvent], int | None]:
        """A page of the journal's lease grants and ends, and the seq to go on after."""
        if not 1 <= request.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        if request.after is not None and request.after < 0:
            raise BadRequest("after is a seq: 0 or more")
        since, until = aware(request.since), aware(request.until)
        if since is not None and until is not None and until < since:
            return [], None  # (an empty span of time, as an empty search is)
        after = request.after
        if after is None:
            after = 0 if since is None else self.store.first_event_at(since) - 1
        found, next_cursor = self.store.lease_events(after, request.limit, HISTORY_WALK)
        events = [_lease_event.decode(value) for _, value in found]
        if until is not None:
            kept = [event for event in events if event.ts <= until]
            if len(kept) < len(events) or (next_cursor is not None and self.store
                                           .first_event_at(until) <= next_cursor):
                next_cursor = None  # (the journal after *until* is not asked for)
            events = kept
        return events, next_cursor

    # -- contexts ---------------------------------------------------------------------

    def get_context(self, context_id: str) -> Context:
        raw = self.store.context(validate.context_id(context_id))
        if raw is None:
            raise NotFound(f"no context {context_id}")
        return _context_decoder.decode(raw)

    def list_contexts(self, limit: int, after: str | None, prefix: str
                      ) -> tuple[list[Context], str | None]:
        """A page of contexts by id, and the id to continue after (None at the end)."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        contexts: list[Context] = []
        for raw in self.store.contexts(prefix=prefix, after=after):
            if len(contexts) == limit:
                return contexts, contexts[-1].id
            contexts.append(_context_decoder.decode(raw))
        return contexts, None

    def watchers(self, context_id: str) -> list[str]:
        """Agents whose live subscriptions cover *context_id* now (presence)."""
        return self.hub.watchers(context_id)

    # -- search -----------------------------------------------------------------------

    async def search(self, request: Search) -> tuple[int, list[SearchHit]]:
        """How many units match in all, and the page of hits asked for."""
        if not 1 <= request.limit <= MAX_SEARCH_PAGE or not 0 <= request.offset <= INT64_MAX:
            raise BadRequest(f"limit must be 1 to {MAX_SEARCH_PAGE} and offset at least 0")
        if len(request.query) > MAX_QUERY_CHARS:
            raise TooLarge(f"query over {MAX_QUERY_CHARS} characters")
        if request.mode not in SEARCH_MODES:
            raise BadRequest(f"mode must be one of {', '.join(SEARCH_MODES)}")
        if request.advanced and not request.query.strip():
            raise BadRequest("an advanced query needs some FTS5 syntax")
        if request.mode == "keyword" and request.min_similarity is not None:
            raise BadRequest("min_similarity applies to semantic and hybrid search")
        if request.mode == "keyword" and request.exact:
            raise BadRequest("exact applies to semantic and hybrid search")
        if request.mode != "keyword":
            if not self.indexer.semantic:
                raise BadRequest(f"{request.mode} search is not available on this daemon: "
                                 f"install it with {EXTRA_HINT} (and leave search.semantic "
                                 "at auto), then restart engramd; if it is installed, the "
                                 "daemon's log says why its model is off")
            if not request.query.strip():
                raise BadRequest(f"{request.mode} search needs words to look for")
            if request.min_similarity is not None and not -1 <= request.min_similarity <= 1:
                raise BadRequest("min_similarity must be between -1 and 1")
        query = request.query if request.advanced else plain_query(request.query)
        unit_ids: set[str] | None = None
        if request.related_to is None:  # checked all the same: never silently ignored
            walk(request.related_types, request.related_direction, request.related_depth)
        else:
            related = self.related(request.related_to, request.related_types,
                                   request.related_direction, request.related_depth)
            unit_ids = {edge.source for edge in related.edges} | {
                edge.target for edge in related.edges}
            unit_ids.discard(related.root)
        filters: dict[str, object] = dict(
            contexts=request.contexts, agents=request.agents,
            types=[validate.unit_type(kind) for kind in request.types], meta=request.meta,
            since_us=_micros(request.since), until_us=_micros(request.until),
            unit_ids=unit_ids)
        if request.mode == "keyword" and query is None and request.query:
            # Words asked for, none indexable ("***", "🚀", spaces): no match, once the
            # filters are known to be good (a bad one is refused whatever the query).
            return 0, []
        wanted = request.offset + request.limit
        try:
            if request.mode == "keyword":
                total, keyword = await self.indexer.search(
                    query, limit=request.limit, offset=request.offset, **filters)
                return total, [SearchHit(unit_id=hit.unit_id, seq=hit.seq,
                                         score=round(hit.score, 6), snippet=hit.snippet)
                               for hit in keyword]
            depth = wanted if request.mode == "semantic" else max(wanted, FUSION_DEPTH)
            total, semantic = await self.indexer.nearest(
                request.query, limit=depth, min_similarity=request.min_similarity,
                exact=request.exact, **filters)
            if request.mode == "semantic":
                return total, [SearchHit(unit_id=hit.unit_id, seq=hit.seq, score=hit.score,
                                         snippet="", similarity=hit.score)
                               for hit in semantic[request.offset:]]
            # Hybrid; text without terms has no keyword side (a filter listing is no rank).
            keyword = [] if query is None else (await self.indexer.search(
                query, limit=depth, offset=0, **filters))[1]
        except QueryError as exc:
            raise BadRequest(f"cannot read the query: {exc}") from None
        fused = fuse(keyword, semantic)
        return len(fused), fused[request.offset:wanted]

    # -- the live stream ----------------------------------------------------------------

    def subscriber(self, request: Subscribe, caller: Caller) -> Subscriber:
        """A subscriber for *request*, its cursor resolved (named cursor, after, or now)."""
        for context_id in request.contexts:
            validate.context_id(context_id)
        unknown = set(request.kinds) - set(EVENT_KINDS)
        if unknown:
            raise BadRequest(f"unknown event kind {', '.join(sorted(unknown))} "
                             f"(one of {', '.join(EVENT_KINDS)})")
        for kind in request.types:
            validate.unit_type(kind)
        if request.heartbeat is not None and request.heartbeat < MIN_HEARTBEAT:
            raise BadRequest(f"heartbeat must be at least {MIN_HEARTBEAT:g} seconds")
        cursor = self.hub.head if request.after is None else request.after
        if request.after is not None and not request.after >= 0:
            raise BadRequest("after must be a sequence number (0 for the start)")
        if request.cursor is not None:
            validate.name(request.cursor, "cursor name")
            stored = self.store.cursor(caller.agent_id, request.cursor)
            if stored is None:
                # A new name starts where its first subscription does: the next one
                # under it gets what came after, though this one acknowledged nothing.
                self.store.set_cursor(caller.agent_id, request.cursor, cursor)
                self.marks.cursor_moved(caller.agent_id, request.cursor, cursor)
            else:
                cursor = stored
        return Subscriber(id=request.id, agent_id=caller.agent_id, filter=Filter.of(request),
                          cursor=cursor, heartbeat=request.heartbeat or self.heartbeat_seconds,
                          cursor_name=request.cursor)

    def ack_cursor(self, name: str, seq: int, caller: Caller) -> None:
        """Store *seq* under the caller's cursor *name* (each agent's names are its own).
        A seq beyond the newest event names nothing delivered: refused, for it would
        silently skip every event up to it."""
        validate.name(name, "cursor name")
        if seq < 0:
            raise BadRequest("seq must not be negative")
        if seq > self.hub.head:
            raise BadRequest(f"seq {seq} is beyond the newest event ({self.hub.head}): "
                             "acknowledge a seq that was delivered")
        self.store.set_cursor(caller.agent_id, name, seq)
        self.marks.cursor_moved(caller.agent_id, name, seq)

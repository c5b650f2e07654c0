"""The write path, top to bottom: validate -> build -> commit -> apply -> publish -> index.

1. **Validate** (:class:`Writer`): a request's drafts are checked against the
   limits (:mod:`engramd.validate`) before anything is queued.
2. **Build** (the ``build`` closures below): in the committer's batch order each
   change is numbered and time-stamped and checked against current state — the
   store, plus what the earlier changes of the same batch did (:class:`InFlight`):
   contexts, relationship targets, idempotency keys, fences.
3. **Commit** (:mod:`engramd.commit`): the batch's records go to the log with one
   ``write`` and one ``fdatasync`` in a worker thread. Durable from here.
4. **Apply**: the same thread applies the batch to the store.
5. **Publish** (:func:`published`): the committer hands the applied events here,
   and they go to the event hub for the live stream,
6. **Index**: and the search indexer is woken to take them.

Only then are the requests answered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from engramd import ids, validate
from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.events import EventHub, describe_live
from engramd.indexer import Indexer
from engramd.protocol import (
    BadRequest,
    Conflict,
    CreateContext,
    Fence,
    NotFound,
    TooLarge,
    UnitDraft,
    UnitOrigin,
    UpdateContext,
)
from engramd.protocol.model import (
    Context,
    ContextChange,
    ContextCreated,
    ContextUpdated,
    Unit,
    UnitCreated,
)
from engramd.storage import Store
from engramd.wal.record import Entry

_unit_decoder = msgspec.msgpack.Decoder(Unit)
_context_decoder = msgspec.msgpack.Decoder(Context)


@dataclass
class InFlight:
    """What the changes built into the batch being written did, before the store has it."""

    units: dict[str, Unit] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    contexts: dict[str, Context] = field(default_factory=dict)

    def clear(self) -> None:
        """The batch is in the store (or was refused): the store is the truth again."""
        self.units.clear()
        self.keys.clear()
        self.contexts.clear()


class StoredContexts:
    """The contexts most recently written or read, as the store holds them: a write looks
    its context up on every unit, and decoding it from RocksDB each time cost more than
    the rest of the lookup."""

    SIZE = 4096
    """Contexts kept by default (``cache.contexts``)."""

    def __init__(self, store: Store, size: int = SIZE) -> None:
        self.store = store
        self.size = size
        self._recent: dict[str, Context] = {}

    def get(self, context_id: str) -> Context | None:
        found = self._recent.get(context_id)
        if found is None:
            raw = self.store.context(context_id)
            if raw is None:
                return None
            found = _context_decoder.decode(raw)
            self._keep(found)
        return found

    def applied(self, entries: list[Entry]) -> None:
        """These entries are in the store now: their contexts are the stored ones."""
        for entry in entries:
            for event in entry.events:
                if isinstance(event, ContextCreated | ContextUpdated):
                    self._keep(event.context)

    def _keep(self, context: Context) -> None:
        self._recent.pop(context.id, None)
        if len(self._recent) >= self.size:
            del self._recent[next(iter(self._recent))]  # the least recently kept
        self._recent[context.id] = context


def published(in_flight: InFlight, contexts: StoredContexts, hub: EventHub,
              indexer: Indexer, followers: list[Callable[[list[Entry]], None]]
              ) -> Callable[[list[Entry]], None]:
    """What the committer calls once a batch is durable and applied: steps 5 and 6, and
    the *followers* that keep state derived from the store (the mailbox, the tasks)."""

    def applied(entries: list[Entry]) -> None:
        in_flight.clear()
        contexts.applied(entries)
        for follower in followers:
            follower(entries)
        hub.publish(describe_live(event) for entry in entries for event in entry.events)
        indexer.wake()

    return applied


@dataclass(frozen=True)
class Written:
    """What ``unit.create`` wrote: the units in draft order, and the ids reused by key."""

    units: list[Unit]
    reused: list[str]


class Writer:
    """Units and contexts, through validation, the batch and the log."""

    def __init__(self, store: Store, committer: GroupCommitter, in_flight: InFlight,
                 contexts: StoredContexts, limits: validate.WriteLimits,
                 check_fence: Callable[[Fence], object],
                 prepare_fences: Callable[[list[Fence]], Awaitable[None]] | None = None
                 ) -> None:
        self.store = store
        self.committer = committer
        self.in_flight = in_flight
        self.contexts = contexts
        self.limits = limits
        self.check_fence = check_fence
        self.prepare_fences = prepare_fences
        """Cluster mode: brings the lease table up to the cluster's current tokens for
        the fences of a write, before the check made while building it."""

    # -- state lookups, in-flight first ------------------------------------------

    def _context(self, context_id: str) -> Context | None:
        found = self.in_flight.contexts.get(context_id)
        if found is not None:
            return found
        return self.contexts.get(context_id)

    context = _context
    """The context as the journal has it, the batch being built included."""

    def _unit_exists(self, unit_id: str) -> bool:
        return unit_id in self.in_flight.units or self.store.unit_location(unit_id) is not None

    def _unit(self, unit_id: str) -> Unit:
        found = self.in_flight.units.get(unit_id)
        if found is not None:
            return found
        (raw,) = self.store.units_by_id([unit_id])
        assert raw is not None, unit_id  # its key said it exists
        return _unit_decoder.decode(raw)

    # -- units ----------------------------------------------------------------------

    async def create_units(self, drafts: list[UnitDraft], caller: Caller,
                           agents: list[str] | None = None,
                           origins: list[UnitOrigin | None] | None = None) -> Written:
        """Write *drafts* as the caller's units, or (an import) as ``agents[i]``'s each,
        keeping the id and time of ``origins[i]`` where one is given."""
        if not drafts:
            raise BadRequest("no units to create")
        if len(drafts) > self.limits.max_batch_units:
            raise TooLarge(f"{len(drafts)} units in one request, limit "
                           f"{self.limits.max_batch_units}")
        checked = [validate.draft(draft, self.limits) for draft in drafts]
        if agents is None:
            agents = [caller.agent_id] * len(drafts)
        elif len(agents) != len(drafts):
            raise BadRequest(f"{len(agents)} agents for {len(drafts)} units: name one per unit")
        for agent in set(agents):
            validate.agent_id(agent)
        if not origins:
            origins = [None] * len(drafts)
        elif len(origins) != len(drafts):
            raise BadRequest(f"{len(origins)} origins for {len(drafts)} units: give one per "
                             "unit, or none")
        for origin in origins:
            if origin is not None:
                validate.origin_id(origin.id)
        in_flight = self.in_flight
        fences = [draft.fence for draft in checked if draft.fence is not None]
        if fences and self.prepare_fences is not None:
            await self.prepare_fences(fences)

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Written]:
            seq = first_seq
            events: list[UnitCreated | ContextCreated | ContextUpdated] = []
            units: list[Unit] = []
            reused: list[str] = []
            new_units: dict[str, Unit] = {}
            keys: dict[str, str] = {}
            contexts: dict[str, Context] = {}
            # An imported unit already here under another id (imported before ids were
            # kept, by its idempotency key): relationships to its old id go to that one.
            renamed: dict[str, str] = {}
            for draft, agent, origin in zip(checked, agents, origins, strict=True):
                if draft.fence is not None:
                    self.check_fence(draft.fence)
                if origin is not None and (origin.id in new_units
                                           or self._unit_exists(origin.id)):
                    units.append(new_units.get(origin.id) or self._unit(origin.id))
                    reused.append(origin.id)
                    continue
                key = draft.idempotency_key
                if key is not None:
                    known = keys.get(key) or in_flight.keys.get(key) \
                        or self.store.idempotent_unit(key)
                    if known is not None and known not in new_units \
                            and not self._unit_exists(known):
                        known = None  # retention removed that unit: the key is free again
                    if known is not None:
                        units.append(new_units.get(known) or self._unit(known))
                        reused.append(known)
                        if origin is not None:
                            renamed[origin.id] = known
                        continue
                relationships = draft.relationships
                if renamed:
                    relationships = [msgspec.structs.replace(rel, target=renamed[rel.target])
                                     if rel.target in renamed else rel for rel in relationships]
                for rel in relationships:
                    if rel.target not in new_units and not self._unit_exists(rel.target):
                        archive = self.store.archived(rel.target)
                        raise BadRequest(f"relationship {rel.type} to unknown unit {rel.target}"
                                         + (f" (removed by retention, archived in {archive}: "
                                            "'engram unit import' brings it back)"
                                            if archive else ""))
                context = contexts.get(draft.context_id) or self._context(draft.context_id)
                if context is None:
                    context = Context(id=draft.context_id, display_name=draft.context_id,
                                      agent_ids=[agent], pinned_units=[], meta={},
                                      created_at=ts, updated_at=ts)
                    events.append(ContextCreated(seq=seq, ts=ts, context_id=context.id,
                                                 context=context))
                    seq += 1
                elif agent not in context.agent_ids:
                    context = msgspec.structs.replace(
                        context, agent_ids=[*context.agent_ids, agent], updated_at=ts)
                    events.append(ContextUpdated(
                        seq=seq, ts=ts, context_id=context.id, context=context,
                        changes=[ContextChange(kind="agent_joined", value=agent)]))
                    seq += 1
                contexts[context.id] = context
                unit = Unit(id=origin.id if origin else ids.uuid7(), seq=seq,
                            context_id=draft.context_id, agent_id=agent, type=draft.type,
                            ts=origin.ts.astimezone(dt.UTC) if origin else ts,
                            meta=draft.meta, payload=draft.payload,
                            relationships=relationships, uid=caller.uid, pid=caller.pid)
                events.append(UnitCreated(seq=seq, ts=ts, context_id=unit.context_id, unit=unit))
                seq += 1
                units.append(unit)
                new_units[unit.id] = unit
                if key is not None:
                    keys[key] = unit.id
            in_flight.units.update(new_units)
            in_flight.keys.update(keys)
            in_flight.contexts.update(contexts)
            entry = Entry(first_seq=first_seq, events=list(events), idempotency_keys=keys)
            return (entry if events else None), Written(units, reused)

        return await self.committer.commit(build)

    # -- contexts ---------------------------------------------------------------------

    async def create_context(self, request: CreateContext, caller: Caller) -> Context:
        # (absent: one is made up; an empty one is an invalid name, as everywhere)
        context_id = (ids.context_slug() if request.context_id is None
                      else validate.context_id(request.context_id))
        display_name = validate.name(request.display_name or context_id, "display name")
        meta = validate.meta(request.meta, self.limits)

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Context]:
            if self._context(context_id) is not None:
                raise Conflict(f"context {context_id} already exists")
            context = Context(id=context_id, display_name=display_name,
                              agent_ids=[caller.agent_id], pinned_units=[], meta=meta,
                              created_at=ts, updated_at=ts)
            self.in_flight.contexts[context_id] = context
            event = ContextCreated(seq=first_seq, ts=ts, context_id=context_id, context=context)
            return Entry(first_seq=first_seq, events=[event]), context

        return await self.committer.commit(build)

    async def update_context(self, request: UpdateContext) -> Context:
        validate.context_id(request.context_id)
        for agent in [*request.add_agents, *request.remove_agents]:
            validate.agent_id(agent)
        for unit_id in [*request.pin, *request.unpin]:
            validate.unit_id(unit_id)
        if request.display_name is not None:
            validate.name(request.display_name, "display name")
        validate.meta(request.set_meta, self.limits)

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Context]:
            context = self._context(request.context_id)
            if context is None:
                raise NotFound(f"no context {request.context_id}")
            updated, changes = self._changed(context, request)
            if not changes:
                return None, context
            updated = msgspec.structs.replace(updated, updated_at=ts)
            self.in_flight.contexts[updated.id] = updated
            event = ContextUpdated(seq=first_seq, ts=ts, context_id=updated.id,
                                   context=updated, changes=changes)
            return Entry(first_seq=first_seq, events=[event]), updated

        return await self.committer.commit(build)

    def _changed(self, context: Context, request: UpdateContext
                 ) -> tuple[Context, list[ContextChange]]:
        """*context* as *request* changes it, and the changes (none: nothing to write)."""
        changes: list[ContextChange] = []

        def change(kind: str, values: Iterable[str]) -> None:
            changes.extend(ContextChange(kind=kind, value=value) for value in values)

        name = context.display_name
        if request.display_name is not None and request.display_name != name:
            name = request.display_name
            change("renamed", [name])
        agents = list(context.agent_ids)
        joining = [agent for agent in dict.fromkeys(request.add_agents) if agent not in agents]
        agents += joining
        change("agent_joined", joining)
        leaving = [agent for agent in dict.fromkeys(request.remove_agents) if agent in agents]
        agents = [agent for agent in agents if agent not in leaving]
        change("agent_left", leaving)
        pinned = list(context.pinned_units)
        for unit_id in request.pin:
            if not self._unit_exists(unit_id):
                raise NotFound(f"cannot pin unknown unit {unit_id}")
        pinning = [unit for unit in dict.fromkeys(request.pin) if unit not in pinned]
        pinned += pinning
        change("unit_pinned", pinning)
        unpinning = [unit for unit in dict.fromkeys(request.unpin) if unit in pinned]
        pinned = [unit for unit in pinned if unit not in unpinning]
        change("unit_unpinned", unpinning)
        meta = dict(context.meta)
        setting = {key: value for key, value in request.set_meta.items()
                   if meta.get(key) != value}
        meta.update(setting)
        change("meta_set", setting)
        unsetting = [key for key in dict.fromkeys(request.unset_meta) if key in meta]
        for key in unsetting:
            del meta[key]
        change("meta_unset", unsetting)
        if len(meta) > self.limits.max_meta_entries:
            raise TooLarge(f"{len(meta)} metadata entries, limit {self.limits.max_meta_entries}")
        return msgspec.structs.replace(context, display_name=name, agent_ids=agents,
                                       pinned_units=pinned, meta=meta), changes

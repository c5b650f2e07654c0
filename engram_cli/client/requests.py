"""Request builders shared by the blocking and the trio client.

Each turns friendly Python arguments into the protocol's request Struct (its id
left for the connection to assign), for :mod:`engram_cli.client.operations`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from engramd.protocol import (
    CreateContext,
    CreateUnits,
    Fence,
    ListContexts,
    ListUnits,
    RelatedUnits,
    Relationship,
    Subscribe,
    UnitDraft,
    UpdateContext,
)

Payload = bytes | str


def as_bytes(payload: Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def relationship(kind: str, target: str, meta: Mapping[str, str] | None = None) -> Relationship:
    return Relationship(type=kind, target=target, meta=dict(meta or {}))


def draft(
    context_id: str,
    type: str = "MESSAGE",
    payload: Payload = b"",
    *,
    meta: Mapping[str, str] | None = None,
    relationships: Iterable[Relationship | tuple[str, str]] = (),
    idempotency_key: str | None = None,
    fence: tuple[str, int] | None = None,
) -> UnitDraft:
    """A unit to write; ``relationships`` may be ``(TYPE, target id)`` pairs.

    ``fence=(resource, token)`` makes the write conditional on that lease.
    """
    return UnitDraft(
        context_id=context_id,
        type=type,
        payload=as_bytes(payload),
        meta=dict(meta or {}),
        relationships=[rel if isinstance(rel, Relationship) else relationship(*rel)
                       for rel in relationships],
        idempotency_key=idempotency_key,
        fence=None if fence is None else Fence(resource=fence[0], token=fence[1]),
    )


def subscribe(
    *,
    contexts: Iterable[str] = (),
    kinds: Iterable[str] = (),
    agents: Iterable[str] = (),
    types: Iterable[str] = (),
    meta: Mapping[str, str] | None = None,
    after: int | None = None,
    cursor: str | None = None,
    heartbeat: float | None = None,
) -> Subscribe:
    """``after``: None from now on, 0 from the start, else a seq; ``cursor``: a name."""
    return Subscribe(contexts=list(contexts), kinds=list(kinds),
                     agents=list(agents), types=list(types), meta=dict(meta or {}),
                     after=after, cursor=cursor, heartbeat=heartbeat)


def create_units(drafts: Iterable[UnitDraft]) -> CreateUnits:
    return CreateUnits(units=list(drafts))


def list_units(
    context_id: str,
    *,
    limit: int = 100,
    before: int | None = None,
    after: int | None = None,
    reverse: bool = False,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    agents: Iterable[str] = (),
    types: Iterable[str] = (),
) -> ListUnits:
    return ListUnits(context_id=context_id, limit=limit, before=before,
                     after=after, reverse=reverse, since=since, until=until,
                     agents=list(agents), types=list(types))


def related_units(unit_id: str, *, types: Iterable[str] = (), direction: str = "both",
                  depth: int = 1) -> RelatedUnits:
    return RelatedUnits(unit_id=unit_id, types=list(types), direction=direction, depth=depth)


def create_context(context_id: str | None = None, *,
                   display_name: str | None = None,
                   meta: Mapping[str, str] | None = None) -> CreateContext:
    return CreateContext(context_id=context_id, display_name=display_name,
                         meta=dict(meta or {}))


def list_contexts(*, limit: int = 100, after: str | None = None,
                  prefix: str = "") -> ListContexts:
    return ListContexts(limit=limit, after=after, prefix=prefix)


def update_context(
    context_id: str,
    *,
    display_name: str | None = None,
    add_agents: Iterable[str] = (),
    remove_agents: Iterable[str] = (),
    pin: Iterable[str] = (),
    unpin: Iterable[str] = (),
    set_meta: Mapping[str, str] | None = None,
    unset_meta: Iterable[str] = (),
) -> UpdateContext:
    return UpdateContext(context_id=context_id, display_name=display_name,
                         add_agents=list(add_agents), remove_agents=list(remove_agents),
                         pin=list(pin), unpin=list(unpin), set_meta=dict(set_meta or {}),
                         unset_meta=list(unset_meta))
